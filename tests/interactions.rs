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
        ("[[\"education\", \"age\"]]", "not in data.categorical"),
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
