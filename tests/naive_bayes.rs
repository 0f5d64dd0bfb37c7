//! Naive Bayes (`gaussian_nb`, `multinomial_nb`) through the real binary
//! on real Parquet files: the fit against an independent two-pass `f64`
//! computation of the estimates, forgetting against training from scratch
//! on what remains (bit for bit, hashed categorical columns included), a
//! stream with retractions, and the refusals.
#![allow(clippy::unwrap_used, clippy::needless_range_loop)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float64Array, StringArray};
use arrow::record_batch::RecordBatch;
use common::{assert_success, read_columns, root, tidemill, tidemill_ok, write_parquet};

fn key_file(dir: &Path, name: &str, rows: impl Iterator<Item = usize>) -> PathBuf {
    common::keys_csv(dir, name, "f", rows)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The digits data: 64 pixel columns (counts 0..16) and the class.
fn digits() -> (Vec<String>, Vec<Vec<f64>>, Vec<usize>) {
    let path = root().join("datasets/digits.parquet");
    let names: Vec<String> = common::column_names(&path)
        .into_iter()
        .filter(|n| n != "target")
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let cols = read_columns(&path, &refs);
    let y = read_columns(&path, &["target"]).remove(0);
    (names, cols, y.iter().map(|&v| v as usize).collect())
}

fn close(got: f64, want: f64, tol: f64, what: &str) {
    assert!(
        (got - want).abs() <= tol * want.abs().max(1.0),
        "{what}: {got} against {want}"
    );
}

/// Log-sum-exp softmax.
fn posterior(joint: &[f64]) -> Vec<f64> {
    let max = joint.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let z: f64 = joint.iter().map(|m| (m - max).exp()).sum();
    joint.iter().map(|m| (m - max).exp() / z).collect()
}

#[test]
fn naive_bayes_matches_an_independent_fit_on_digits() {
    let dir = tempfile::tempdir().unwrap();
    let (names, cols, y) = digits();
    let (n, p, k) = (y.len(), cols.len(), 10);
    let by_class: Vec<Vec<usize>> = (0..k)
        .map(|c| (0..n).filter(|&i| y[i] == c).collect())
        .collect();
    let rows_of = |c: usize| by_class[c].iter().copied();
    let count: Vec<f64> = (0..k).map(|c| rows_of(c).count() as f64).collect();
    for kind in ["gaussian_nb", "multinomial_nb"] {
        let model = dir.path().join(format!("{kind}.json"));
        let pipeline = dir.path().join(format!("{kind}.toml"));
        std::fs::write(
            &pipeline,
            format!(
                "[data]\ntrain = {:?}\nlabel = \"target\"\n[model]\nkind = \"{kind}\"\n[optimizer]\nkind = \"exact\"\n",
                s(&root().join("datasets/digits.parquet"))
            ),
        )
        .unwrap();
        tidemill_ok(&["train", s(&pipeline), "--model-out", s(&model), "-w", "2"]);
        let m = json(&model);
        assert_eq!(m["kind"], kind);
        // The independent estimates, two passes in f64, and each class's
        // joint log-likelihood function.
        let mut params: Vec<(f64, Vec<f64>, Vec<f64>)> = Vec::new();
        if kind == "gaussian_nb" {
            let var_all = |j: usize| {
                let mean = cols[j].iter().sum::<f64>() / n as f64;
                cols[j].iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64
            };
            let eps = 1e-9 * (0..p).map(var_all).fold(0.0, f64::max);
            close(
                m["naive_bayes"]["epsilon"].as_f64().unwrap(),
                eps,
                1e-12,
                "epsilon",
            );
            for c in 0..k {
                let mean: Vec<f64> = (0..p)
                    .map(|j| rows_of(c).map(|i| cols[j][i]).sum::<f64>() / count[c])
                    .collect();
                let var: Vec<f64> = (0..p)
                    .map(|j| {
                        rows_of(c)
                            .map(|i| (cols[j][i] - mean[j]).powi(2))
                            .sum::<f64>()
                            / count[c]
                            + eps
                    })
                    .collect();
                params.push(((count[c] / n as f64).ln(), mean, var));
            }
        } else {
            for c in 0..k {
                let totals: Vec<f64> = (0..p)
                    .map(|j| rows_of(c).map(|i| cols[j][i]).sum::<f64>())
                    .collect();
                let all: f64 = totals.iter().sum::<f64>() + p as f64;
                let log_theta = totals.iter().map(|t| (t + 1.0).ln() - all.ln()).collect();
                params.push(((count[c] / n as f64).ln(), log_theta, Vec::new()));
            }
        }
        for (c, (prior, a, b)) in params.iter().enumerate() {
            let class = c.to_string();
            close(
                m["intercept"][&class].as_f64().unwrap(),
                *prior,
                1e-12,
                "prior",
            );
            assert_eq!(
                m["naive_bayes"]["class_rows"][&class].as_f64().unwrap(),
                count[c]
            );
            for (j, name) in names.iter().enumerate() {
                close(
                    m["coefficients"][&class][name].as_f64().unwrap(),
                    a[j],
                    1e-12,
                    &format!("{kind} class {c} {name}"),
                );
                if kind == "gaussian_nb" {
                    close(
                        m["naive_bayes"]["variance"][&class][name].as_f64().unwrap(),
                        b[j],
                        1e-10,
                        &format!("variance of class {c} {name}"),
                    );
                }
            }
        }
        // The posteriors `predict` writes, against the independent ones.
        let out = dir.path().join(format!("{kind}.parquet"));
        tidemill_ok(&[
            "predict",
            "--model",
            s(&model),
            "--input",
            s(&root().join("datasets/digits.parquet")),
            "--output",
            s(&out),
        ]);
        let prob_names: Vec<String> = (0..k).map(|c| format!("probability_{c}")).collect();
        let refs: Vec<&str> = prob_names.iter().map(String::as_str).collect();
        let probs = read_columns(&out, &refs);
        let mut correct = 0;
        for i in 0..n {
            let joint: Vec<f64> = params
                .iter()
                .map(|(prior, a, b)| {
                    prior
                        + (0..p)
                            .map(|j| {
                                let x = cols[j][i];
                                if kind == "gaussian_nb" {
                                    -0.5 * ((2.0 * std::f64::consts::PI * b[j]).ln()
                                        + (x - a[j]).powi(2) / b[j])
                                } else {
                                    x * a[j]
                                }
                            })
                            .sum::<f64>()
                })
                .collect();
            let want = posterior(&joint);
            for c in 0..k {
                assert!(
                    (probs[c][i] - want[c]).abs() < 1e-9,
                    "{kind} row {i} class {c}: {} against {}",
                    probs[c][i],
                    want[c]
                );
            }
            let best = (0..k).fold(0, |b, c| if want[c] > want[b] { c } else { b });
            correct += usize::from(best == y[i]);
        }
        // And the accuracy `eval` reports is the independent one.
        let eval: serde_json::Value = serde_json::from_str(&tidemill_ok(&[
            "eval",
            "--model",
            s(&model),
            "--input",
            s(&root().join("datasets/digits.parquet")),
        ]))
        .unwrap();
        close(
            eval["accuracy"].as_f64().unwrap(),
            correct as f64 / n as f64,
            1e-15,
            "accuracy",
        );
    }
}

/// The first `rows` flights of nycflights13 with a key `id` = `f<row>`,
/// keeping the rows `keep` selects, in row groups of 5000.
fn flights(dir: &Path, name: &str, rows: usize, keep: impl Fn(usize) -> bool) -> PathBuf {
    let batches = common::dataset_batches("nycflights13.parquet");
    let all = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    let all = all.slice(0, rows);
    let picked: Vec<u64> = (0..rows as u64).filter(|&i| keep(i as usize)).collect();
    let take = arrow::array::UInt64Array::from(picked.clone());
    let mut columns: Vec<(&str, ArrayRef)> = Vec::new();
    let schema = all.schema();
    for name in [
        "carrier", "tailnum", "origin", "dest", "hour", "distance", "late15",
    ] {
        let (i, _) = schema.column_with_name(name).unwrap();
        let col = arrow::compute::take(all.column(i), &take, None).unwrap();
        columns.push((name, col));
    }
    let ids: Vec<String> = picked.iter().map(|i| format!("f{i}")).collect();
    columns.push(("id", Arc::new(StringArray::from(ids)) as ArrayRef));
    let path = dir.join(name);
    write_parquet(&path, columns, 5000);
    path
}

fn flights_pipeline(dir: &Path, data: &Path, name: &str, state: bool) -> PathBuf {
    let text = format!(
        "[data]\ntrain = {:?}\nlabel = \"late15\"\nkey = \"id\"\n\
         features = [\"carrier\", \"tailnum\", \"origin\", \"dest\", \"hour\", \"distance\"]\n\
         categorical = [\"carrier\", \"tailnum\", \"origin\", \"dest\", \"hour\"]\nhash_bits = 12\n\
         [model]\nkind = \"multinomial_nb\"\nalpha = 0.5\n[optimizer]\nkind = \"exact\"\n{}",
        s(data),
        if state {
            format!(
                "[output]\nstate = {:?}\n",
                s(&dir.join(format!("{name}.state")))
            )
        } else {
            String::new()
        }
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Fits multinomial naive Bayes to the flights of `data` independently
/// (tokens hashed by the library's public hash, counts summed in `f64`)
/// and checks the posteriors `predict` writes with `model` against it.
fn independent_multinomial_check(dir: &Path, data: &Path, model: &Path) {
    let categorical = ["carrier", "tailnum", "origin", "dest", "hour"];
    let (bits, alpha) = (12u32, 0.5);
    let slots = 1usize << bits;
    let file = std::fs::File::open(data).unwrap();
    let batches: Vec<RecordBatch> =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap()
            .map(Result::unwrap)
            .collect();
    let table = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    let text = |name: &str| -> Vec<String> {
        let c = arrow::compute::cast(
            table.column_by_name(name).unwrap(),
            &arrow::datatypes::DataType::Utf8,
        )
        .unwrap();
        let c = c.as_any().downcast_ref::<StringArray>().unwrap();
        (0..c.len()).map(|i| c.value(i).to_string()).collect()
    };
    let tokens: Vec<Vec<String>> = categorical.iter().map(|c| text(c)).collect();
    let distance: Vec<f64> = text("distance")
        .iter()
        .map(|v| v.parse().unwrap())
        .collect();
    let label: Vec<usize> = text("late15").iter().map(|v| v.parse().unwrap()).collect();
    let n = label.len();
    let slot_of = |i: usize| -> Vec<usize> {
        categorical
            .iter()
            .zip(&tokens)
            .map(|(c, t)| tidemill::data::hashing::hash_token(c, &t[i], bits).0 as usize)
            .collect()
    };
    // Per class: rows, the distance total, tokens per slot.
    let mut rows = [0.0f64; 2];
    let mut dist = [0.0f64; 2];
    let mut counts = vec![vec![0.0f64; slots]; 2];
    for i in 0..n {
        let c = label[i];
        rows[c] += 1.0;
        dist[c] += distance[i];
        for s in slot_of(i) {
            counts[c][s] += 1.0;
        }
    }
    let d = (1 + slots) as f64;
    let norm: Vec<f64> = (0..2)
        .map(|c| (dist[c] + counts[c].iter().sum::<f64>() + alpha * d).ln())
        .collect();
    let out = dir.join("flights_predictions.parquet");
    tidemill_ok(&[
        "predict",
        "--model",
        s(model),
        "--input",
        s(data),
        "--output",
        s(&out),
    ]);
    let probs = read_columns(&out, &["probability_0", "probability_1"]);
    for i in (0..n).step_by(7) {
        let joint: Vec<f64> = (0..2)
            .map(|c| {
                (rows[c] / n as f64).ln()
                    + distance[i] * ((dist[c] + alpha).ln() - norm[c])
                    + slot_of(i)
                        .into_iter()
                        .map(|s| (counts[c][s] + alpha).ln() - norm[c])
                        .sum::<f64>()
            })
            .collect();
        let want = posterior(&joint);
        for c in 0..2 {
            assert!(
                (probs[c][i] - want[c]).abs() < 1e-9,
                "row {i} class {c}: {} against {}",
                probs[c][i],
                want[c]
            );
        }
    }
}

#[test]
fn multinomial_nb_with_hashed_columns_forgets_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let rows = 40_000;
    let all = flights(dir.path(), "all.parquet", rows, |_| true);
    let gone = |i: usize| i % 7 == 3 || i.is_multiple_of(11);
    let rest = flights(dir.path(), "rest.parquet", rows, |i| !gone(i));
    let scratch = dir.path().join("scratch.json");
    let p_rest = flights_pipeline(dir.path(), &rest, "rest", false);
    tidemill_ok(&["train", s(&p_rest), "--model-out", s(&scratch)]);
    let m = json(&scratch);
    assert_eq!(m["naive_bayes"]["alpha"], 0.5);
    assert!(m["hashed"]["1"].as_object().unwrap().len() > 100);
    independent_multinomial_check(dir.path(), &rest, &scratch);
    // Every row on 3 workers, then two forgets.
    let p_all = flights_pipeline(dir.path(), &all, "all", true);
    let model = dir.path().join("model.json");
    tidemill_ok(&["train", s(&p_all), "--model-out", s(&model), "-w", "3"]);
    assert_ne!(
        std::fs::read(&model).unwrap(),
        std::fs::read(&scratch).unwrap()
    );
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
        ]);
    }
    assert_eq!(
        std::fs::read(&model).unwrap(),
        std::fs::read(&scratch).unwrap(),
        "the model after forgetting differs from the model of the remaining rows"
    );
    // A stream that inserts every row and retracts the same keys ends
    // with the same model, on 2 workers.
    let p_stream = flights_pipeline(dir.path(), &all, "stream", false);
    let streamed = dir.path().join("streamed.json");
    let all_gone = key_file(dir.path(), "all_gone.csv", (0..rows).filter(|&i| gone(i)));
    let out = tidemill(&[
        "stream",
        s(&p_stream),
        "--input",
        s(&all),
        "--retract",
        s(&all_gone),
        "--model-out",
        s(&streamed),
        "-w",
        "2",
        "--set",
        "stream.batch_rows=4096",
    ]);
    assert_success(&out, "stream");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let accuracy = summary["progressive_accuracy"].as_f64().unwrap();
    assert!(accuracy > 0.5 && accuracy < 1.0, "{summary}");
    assert!(summary["progressive_log_loss"].as_f64().unwrap() > 0.0);
    assert_eq!(
        std::fs::read(&streamed).unwrap(),
        std::fs::read(&scratch).unwrap(),
        "the streamed model differs from the model of the remaining rows"
    );
    // The same stream in a window of 8000 rows, keeping its window in a
    // state, stopped by SIGTERM mid-way and resumed: the model of the
    // stateless window (classes and hashed slots kept in the state).
    let window = [
        "--set",
        "stream.batch_rows=2000",
        "--set",
        "stream.window={rows=8000}",
        "--set",
        "stream.snapshot_every=1",
    ];
    let run = |p: &Path, model: &Path, extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "stream",
            s(p),
            "--input",
            s(&all),
            "--retract",
            s(&all_gone),
            "--model-out",
            s(model),
        ]
        .iter()
        .chain(window.iter())
        .chain(extra.iter())
        .map(|x| x.to_string())
        .collect();
        a.shrink_to_fit();
        a
    };
    fn argv(a: &[String]) -> Vec<&str> {
        a.iter().map(String::as_str).collect()
    }
    let windowed = dir.path().join("windowed.json");
    tidemill_ok(&argv(&run(&p_stream, &windowed, &[])));
    let p_kept = flights_pipeline(dir.path(), &all, "kept", true);
    let kept = dir.path().join("kept.json");
    let state = dir.path().join("kept.state");
    let generations = || {
        std::fs::read_dir(&state).map_or(0, |e| {
            e.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("checkpoint-"))
                .count()
        })
    };
    let child = common::start(&argv(&run(&p_kept, &kept, &["--rate", "20000"])), &[]);
    common::wait_until("two commits", || generations() >= 2);
    common::sigterm(&child);
    let out = common::finish(child, std::time::Duration::from_secs(60));
    assert_success(&out, "the stopped stream");
    let stopped: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stopped["stopped_by"], "SIGTERM", "{stopped}");
    tidemill_ok(&argv(&run(&p_kept, &kept, &["--resume", "-w", "2"])));
    assert_eq!(
        std::fs::read(&kept).unwrap(),
        std::fs::read(&windowed).unwrap(),
        "a windowed naive Bayes stream stopped and resumed differs from one uninterrupted"
    );
}

#[test]
fn gaussian_nb_forgets_a_class_away_and_refuses_what_it_cannot_fit() {
    let dir = tempfile::tempdir().unwrap();
    let (names, cols, y) = digits();
    // Digits 0, 1 and 2 only, keyed.
    let rows: Vec<usize> = (0..y.len()).filter(|&i| y[i] < 3).collect();
    let mut columns: Vec<(&str, ArrayRef)> = names
        .iter()
        .zip(&cols)
        .map(|(n, c)| {
            let v: Vec<f64> = rows.iter().map(|&i| c[i]).collect();
            (n.as_str(), Arc::new(Float64Array::from(v)) as ArrayRef)
        })
        .collect();
    let labels: Vec<String> = rows.iter().map(|&i| format!("digit{}", y[i])).collect();
    columns.push(("label", Arc::new(StringArray::from(labels)) as ArrayRef));
    let ids: Vec<String> = rows.iter().map(|i| format!("f{i}")).collect();
    columns.push(("id", Arc::new(StringArray::from(ids)) as ArrayRef));
    let data = dir.path().join("digits012.parquet");
    write_parquet(&data, columns, 100);
    let pipeline = dir.path().join("g.toml");
    std::fs::write(
        &pipeline,
        format!(
            "[data]\ntrain = {:?}\nlabel = \"label\"\nkey = \"id\"\n[model]\nkind = \"gaussian_nb\"\nvar_smoothing = 1e-6\n[optimizer]\nkind = \"exact\"\n[output]\nstate = {:?}\n",
            s(&data),
            s(&dir.path().join("state"))
        ),
    )
    .unwrap();
    let model = dir.path().join("model.json");
    tidemill_ok(&["train", s(&pipeline), "--model-out", s(&model)]);
    assert_eq!(
        json(&model)["features"]["classes"],
        serde_json::json!(["digit0", "digit1", "digit2"])
    );
    // Forget every row of digit 2: the model of digits 0 and 1.
    let twos = key_file(
        dir.path(),
        "twos.csv",
        rows.iter().copied().filter(|&i| y[i] == 2),
    );
    tidemill_ok(&[
        "forget",
        s(&pipeline),
        "--keys",
        s(&twos),
        "--model-out",
        s(&model),
    ]);
    let m = json(&model);
    assert_eq!(
        m["features"]["classes"],
        serde_json::json!(["digit0", "digit1"])
    );
    assert_eq!(m["training"]["data"]["rows"], 178 + 182);
    // Forgetting the ones too would leave one class: refused (exit 6),
    // nothing changes.
    let before = std::fs::read(&model).unwrap();
    let ones = key_file(
        dir.path(),
        "ones.csv",
        rows.iter().copied().filter(|&i| y[i] == 1),
    );
    let out = tidemill(&[
        "forget",
        s(&pipeline),
        "--keys",
        s(&ones),
        "--model-out",
        s(&model),
    ]);
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least two classes"));
    assert_eq!(std::fs::read(&model).unwrap(), before);
    // The state did not move either: the same request fails the same way.
    let again = tidemill(&[
        "forget",
        s(&pipeline),
        "--keys",
        s(&ones),
        "--model-out",
        s(&model),
    ]);
    assert_eq!(again.status.code(), Some(6));

    // Refusals before any work.
    let refused = |kind: &str, extra: &str, key: &str| {
        let p = dir.path().join("refused.toml");
        std::fs::write(
            &p,
            format!(
                "[data]\ntrain = {:?}\nlabel = \"label\"\n{extra}\n[model]\nkind = \"{kind}\"\n[optimizer]\nkind = \"exact\"\n",
                s(&data)
            ),
        )
        .unwrap();
        let out = tidemill(&["train", s(&p), "--model-out", s(&dir.path().join("x.json"))]);
        assert_eq!(out.status.code(), Some(2), "{kind} {extra}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(err.contains(key), "{kind} {extra}: {err}");
    };
    refused("gaussian_nb", "categorical = [\"id\"]", "data.categorical");
    refused("gaussian_nb", "standardize = true", "data.standardize");
    refused(
        "multinomial_nb",
        "classes = [\"digit0\", \"digit1\"]",
        "data.classes",
    );
    let p = dir.path().join("lbfgs.toml");
    std::fs::write(
        &p,
        format!(
            "[data]\ntrain = {:?}\nlabel = \"label\"\n[model]\nkind = \"gaussian_nb\"\n[optimizer]\nkind = \"lbfgs\"\n",
            s(&data)
        ),
    )
    .unwrap();
    let out = tidemill(&["train", s(&p)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("optimizer.kind = 'exact'"));
}

#[test]
fn multinomial_nb_refuses_negative_values_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let x: Vec<f64> = (0..50)
        .map(|i| if i == 37 { -2.0 } else { i as f64 })
        .collect();
    let y: Vec<String> = (0..50).map(|i| format!("c{}", i % 2)).collect();
    let data = dir.path().join("neg.parquet");
    write_parquet(
        &data,
        vec![
            ("count", Arc::new(Float64Array::from(x)) as ArrayRef),
            ("label", Arc::new(StringArray::from(y)) as ArrayRef),
        ],
        20,
    );
    let p = dir.path().join("neg.toml");
    std::fs::write(
        &p,
        format!(
            "[data]\ntrain = {:?}\nlabel = \"label\"\n[model]\nkind = \"multinomial_nb\"\n[optimizer]\nkind = \"exact\"\n",
            s(&data)
        ),
    )
    .unwrap();
    let model = dir.path().join("m.json");
    let out = tidemill(&["train", s(&p), "--model-out", s(&model)]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("'count'") && err.contains("row 37") && err.contains("negative"),
        "{err}"
    );
    assert!(!model.exists());
}

#[test]
fn labels_that_name_one_class_twice_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let x: Vec<f64> = (0..40).map(|i| i as f64).collect();
    let y: Vec<String> = (0..40)
        .map(|i| ["1", "1.0", "2"][i % 3].to_string())
        .collect();
    let data = dir.path().join("labels.parquet");
    write_parquet(
        &data,
        vec![
            ("count", Arc::new(Float64Array::from(x)) as ArrayRef),
            ("label", Arc::new(StringArray::from(y)) as ArrayRef),
        ],
        40,
    );
    let p = dir.path().join("labels.toml");
    std::fs::write(
        &p,
        format!(
            "[data]\ntrain = {:?}\nlabel = \"label\"\n[model]\nkind = \"gaussian_nb\"\n[optimizer]\nkind = \"exact\"\n",
            s(&data)
        ),
    )
    .unwrap();
    let model = dir.path().join("m.json");
    let out = tidemill(&["train", s(&p), "--model-out", s(&model)]);
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("the labels present"));
    assert!(!model.exists());
}
