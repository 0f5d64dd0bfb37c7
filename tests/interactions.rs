//! `data.interactions`: a cross of categorical columns is hashed as one
//! more categorical column named `a×b` whose token is `x×y`; training with
//! the cross is training with that column written out — bit for bit — and
//! a saved model applies the cross at `predict`.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, StringArray};
use arrow::record_batch::RecordBatch;
use common::{tidemill, tidemill_ok};

/// adult with the column `education×occupation` written out.
fn adult_with_explicit_cross(path: &std::path::Path) {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let open = || std::fs::File::open(common::root().join("datasets/adult.parquet")).unwrap();
    let groups = ParquetRecordBatchReaderBuilder::try_new(open())
        .unwrap()
        .metadata()
        .num_row_groups();
    // Row group by row group: the same units, so the same steps.
    let mut writer = None;
    for rg in 0..groups {
        let mut reader = ParquetRecordBatchReaderBuilder::try_new(open())
            .unwrap()
            .with_row_groups(vec![rg])
            .with_batch_size(1 << 22)
            .build()
            .unwrap();
        let batch = reader.next().unwrap().unwrap();
        let text = |name: &str| -> Vec<Option<String>> {
            let col = batch.column_by_name(name).unwrap();
            let col = arrow::compute::cast(col, &arrow::datatypes::DataType::Utf8).unwrap();
            let col = col.as_any().downcast_ref::<StringArray>().unwrap();
            (0..col.len())
                .map(|i| col.is_valid(i).then(|| col.value(i).to_string()))
                .collect()
        };
        let (a, b) = (text("education"), text("occupation"));
        let cross: StringArray = a
            .iter()
            .zip(&b)
            .map(|(x, y)| Some(format!("{}×{}", x.as_ref()?, y.as_ref()?)))
            .collect();
        let mut columns: Vec<(String, ArrayRef)> = batch
            .schema()
            .fields()
            .iter()
            .zip(batch.columns())
            .map(|(f, c)| (f.name().clone(), Arc::clone(c)))
            .collect();
        columns.push(("education×occupation".into(), Arc::new(cross)));
        let out = RecordBatch::try_from_iter(columns).unwrap();
        let w = writer.get_or_insert_with(|| {
            parquet::arrow::ArrowWriter::try_new(
                std::fs::File::create(path).unwrap(),
                out.schema(),
                None,
            )
            .unwrap()
        });
        w.write(&out).unwrap();
        w.flush().unwrap();
    }
    writer.unwrap().close().unwrap();
}

fn weights(path: &std::path::Path) -> serde_json::Value {
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let o = m.as_object_mut().unwrap();
    // What differs by construction: how the features are described.
    o.remove("features");
    o.remove("training");
    m
}

#[test]
fn a_cross_is_its_written_out_column_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let explicit = dir.path().join("adult_x.parquet");
    adult_with_explicit_cross(&explicit);
    let categorical = "[\"workclass\", \"education\", \"marital-status\", \"occupation\", \"relationship\", \"race\", \"gender\", \"native-country\"";
    let crossed = dir.path().join("crossed.json");
    let c = crossed.to_string_lossy().to_string();
    let with_cross = format!("data.categorical={categorical}]");
    tidemill_ok(&[
        "train",
        "pipelines/adult.toml",
        "-w",
        "2",
        "--set",
        &with_cross,
        "--set",
        "data.interactions=[[\"education\", \"occupation\"]]",
        "--model-out",
        &c,
    ]);
    let written = dir.path().join("written.json");
    let w = written.to_string_lossy().to_string();
    let train = format!("data.train=\"{}\"", explicit.display());
    let with_column = format!("data.categorical={categorical}, \"education×occupation\"]");
    tidemill_ok(&[
        "train",
        "pipelines/adult.toml",
        "-w",
        "2",
        "--set",
        &train,
        "--set",
        &with_column,
        "--model-out",
        &w,
    ]);
    assert!(
        weights(&crossed) == weights(&written),
        "the cross trains another model"
    );
    // A cross may not take the name of a column the table has.
    let clash = tidemill(&[
        "validate",
        "pipelines/adult.toml",
        "--set",
        &train,
        "--set",
        "data.interactions=[[\"education\", \"occupation\"]]",
    ]);
    let err = String::from_utf8_lossy(&clash.stderr);
    assert_eq!(clash.status.code(), Some(2), "{err}");
    assert!(err.contains("has the name of a column"), "{err}");
    // predict applies the cross from the model file: on the plain table
    // with the cross, on the written-out table with the column, the same.
    let p1 = dir.path().join("p1.parquet");
    let p2 = dir.path().join("p2.parquet");
    tidemill_ok(&[
        "predict",
        "-m",
        &c,
        "-i",
        "datasets/adult.parquet",
        "-o",
        &p1.to_string_lossy(),
    ]);
    tidemill_ok(&[
        "predict",
        "-m",
        &w,
        "-i",
        &explicit.to_string_lossy(),
        "-o",
        &p2.to_string_lossy(),
    ]);
    let a = common::read_columns(&p1, &["probability"]);
    let b = common::read_columns(&p2, &["probability"]);
    assert_eq!(a, b);
    // The two losses, for the record: a cross adds capacity, which need
    // not help on every table.
    let plain = dir.path().join("plain.json");
    let out = tidemill_ok(&[
        "train",
        "pipelines/adult.toml",
        "--model-out",
        &plain.to_string_lossy(),
    ]);
    let crossed_out = tidemill_ok(&[
        "train",
        "pipelines/adult.toml",
        "--set",
        "data.interactions=[[\"education\", \"occupation\"]]",
        "--model-out",
        &c,
    ]);
    let loss = |s: &str| -> f64 {
        let v: serde_json::Value = serde_json::from_str(s).unwrap();
        v["validation"]["loss"].as_f64().unwrap()
    };
    eprintln!(
        "validation loss: plain {}, crossed {}",
        loss(&out),
        loss(&crossed_out)
    );
}

#[test]
fn crosses_are_checked() {
    for (cross, needle) in [
        ("[[\"education\"]]", "two or more"),
        (
            "[[\"education\", \"ocupation\"]]",
            "did you mean 'occupation'?",
        ),
        (
            "[[\"age\", \"hours-per-week\"]]",
            "at least one column of data.categorical",
        ),
        ("[[\"education\", \"income\"]]", "is the label"),
        (
            "[[\"education\", \"race\"], [\"education\", \"race\"]]",
            "listed twice",
        ),
    ] {
        let set = format!("data.interactions={cross}");
        let out = tidemill(&["validate", "pipelines/adult.toml", "--set", &set]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cross}: {err}");
        assert!(err.contains(needle), "{cross}: {err}");
    }
}

/// A numeric × categorical cross `x×g` scales the slot of `g`'s token by
/// `x`: with `g` in {a, b, c} it is the explicit columns `x·[g = a]`,
/// `x·[g = b]`, `x·[g = c]` (each slot's weight times its sign is that
/// column's coefficient: the same optimum, the penalty unchanged by the
/// signs), and `predict` scores a row as the documented margin says.
#[test]
fn a_numeric_cross_is_its_explicit_columns() {
    use arrow::array::{Float64Array, Int64Array};
    let dir = tempfile::tempdir().unwrap();
    let n = 900;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut unit = || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let groups = ["a", "b", "c"];
    let slope = [2.0, -1.5, 0.5];
    let (mut x, mut g, mut y) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let (xi, gi) = (4.0 * unit() - 2.0, i % 3);
        let p = 1.0 / (1.0 + (-(slope[gi] * xi + 0.3)).exp());
        x.push(xi);
        g.push(groups[gi]);
        y.push(i64::from(unit() < p));
    }
    let explicit: Vec<(String, Vec<f64>)> = groups
        .iter()
        .map(|k| {
            let col = x
                .iter()
                .zip(&g)
                .map(|(v, gi)| if gi == k { *v } else { 0.0 })
                .collect();
            (format!("x_{k}"), col)
        })
        .collect();
    let mut columns: Vec<(&str, ArrayRef)> = vec![
        ("x", Arc::new(Float64Array::from(x.clone()))),
        ("g", Arc::new(StringArray::from(g.clone()))),
        ("y", Arc::new(Int64Array::from(y))),
    ];
    for (name, col) in &explicit {
        columns.push((name, Arc::new(Float64Array::from(col.clone()))));
    }
    let data = dir.path().join("groups.parquet");
    common::write_parquet(&data, columns, 300);
    let pipeline = dir.path().join("p.toml");
    std::fs::write(
        &pipeline,
        format!(
            "[data]\ntrain = \"{}\"\nlabel = \"y\"\ncategorical = [\"g\"]\nhash_bits = 20\n[model]\nkind = \"logistic\"\nl2 = 0.001\n[optimizer]\nkind = \"lbfgs\"\ngradient_tolerance = 1e-11\n[train]\nepochs = 500\n",
            data.display()
        ),
    )
    .unwrap();
    let p = pipeline.to_string_lossy().to_string();
    let (crossed, written) = (
        dir.path().join("crossed.json"),
        dir.path().join("written.json"),
    );
    tidemill_ok(&[
        "train",
        &p,
        "--set",
        "data.exclude=[\"x_a\", \"x_b\", \"x_c\"]",
        "--set",
        "data.interactions=[[\"x\", \"g\"]]",
        "--model-out",
        &crossed.to_string_lossy(),
    ]);
    tidemill_ok(&["train", &p, "--model-out", &written.to_string_lossy()]);
    let read = |path: &std::path::Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    };
    let (c, w) = (read(&crossed), read(&written));
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * (1.0 + b.abs());
    assert!(close(
        c["intercept"].as_f64().unwrap(),
        w["intercept"].as_f64().unwrap()
    ));
    assert!(close(
        c["coefficients"]["x"].as_f64().unwrap(),
        w["coefficients"]["x"].as_f64().unwrap()
    ));
    let hashed =
        |m: &serde_json::Value, slot: u32| m["hashed"][slot.to_string()].as_f64().unwrap_or(0.0);
    for k in groups {
        let (gs, gsign) = tidemill::data::hashing::hash_token("g", k, 20);
        let (xs, xsign) = tidemill::data::hashing::hash_token("x×g", k, 20);
        assert!(close(
            hashed(&c, gs) * f64::from(gsign),
            hashed(&w, gs) * f64::from(gsign)
        ));
        let ours = hashed(&c, xs) * f64::from(xsign);
        let theirs = w["coefficients"][format!("x_{k}")].as_f64().unwrap();
        eprintln!("group {k}: cross weight {ours}, explicit column's {theirs}");
        assert!(close(ours, theirs), "{k}: {ours} vs {theirs}");
    }
    // predict applies the cross as the model file documents it.
    let out = dir.path().join("scores.parquet");
    tidemill_ok(&[
        "predict",
        "-m",
        &crossed.to_string_lossy(),
        "-i",
        &data.to_string_lossy(),
        "-o",
        &out.to_string_lossy(),
    ]);
    let scores = common::read_columns(&out, &["probability"]);
    let b = c["intercept"].as_f64().unwrap();
    let wx = c["coefficients"]["x"].as_f64().unwrap();
    for i in (0..n).step_by(37) {
        let (gs, gsign) = tidemill::data::hashing::hash_token("g", g[i], 20);
        let (xs, xsign) = tidemill::data::hashing::hash_token("x×g", g[i], 20);
        let xv = f64::from(x[i] as f32);
        let m = b
            + wx * xv
            + f64::from(gsign) * hashed(&c, gs)
            + f64::from(xsign * x[i] as f32) * hashed(&c, xs);
        let p = 1.0 / (1.0 + (-m).exp());
        assert!(
            (scores[0][i] - p).abs() < 1e-12,
            "row {i}: {} vs {p}",
            scores[0][i]
        );
    }
}

/// A numeric member with missing values (filled by `on_missing`) crosses
/// like any other, and a network warm-started on data that rescales a
/// numeric member of a cross is refused (its slots scale with it).
#[test]
fn numeric_crosses_take_filled_values_and_refuse_a_rescaled_warm_start() {
    use arrow::array::{Float64Array, Int64Array};
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, shift: f64| {
        let n = 300;
        let x: Vec<Option<f64>> = (0..n)
            .map(|i| (i % 17 != 0).then(|| shift + (i % 13) as f64 / 6.0 - 1.0))
            .collect();
        let g: Vec<&str> = (0..n).map(|i| ["a", "b"][i % 2]).collect();
        let y: Vec<i64> = (0..n).map(|i| ((i * 7) % 5 < 2) as i64).collect();
        let path = dir.path().join(name);
        common::write_parquet(
            &path,
            vec![
                ("x", Arc::new(Float64Array::from(x)) as ArrayRef),
                ("g", Arc::new(StringArray::from(g))),
                ("y", Arc::new(Int64Array::from(y))),
            ],
            100,
        );
        path
    };
    let (a, b) = (write("a.parquet", 0.0), write("b.parquet", 3.0));
    let pipeline = dir.path().join("p.toml");
    std::fs::write(
        &pipeline,
        "[data]\nlabel = \"y\"\ncategorical = [\"g\"]\ninteractions = [[\"x\", \"g\"]]\non_missing = \"mean\"\nstandardize = true\nclasses = [\"0\", \"1\"]\n[model]\nkind = \"mlp\"\nhidden = [4]\n[optimizer]\nkind = \"adam\"\n[train]\nepochs = 2\n",
    )
    .unwrap();
    let p = pipeline.to_string_lossy().to_string();
    let model = dir.path().join("m.json");
    let m = model.to_string_lossy().to_string();
    let on = |data: &std::path::Path| format!("data.train=\"{}\"", data.display());
    tidemill_ok(&["train", &p, "--set", &on(&a), "--model-out", &m]);
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&model).unwrap()).unwrap();
    assert_eq!(v["version"], 3, "a numeric cross is model-format version 3");
    let out = tidemill(&[
        "train",
        &p,
        "--set",
        &on(&b),
        "--init-model",
        &m,
        "--model-out",
        &dir.path().join("m2.json").to_string_lossy(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("x×g"), "{err}");
}
