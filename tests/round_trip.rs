//! train → save → load → predict gives exactly the in-memory model's
//! predictions; `predict` and `eval` work on string categoricals, through
//! Parquet, Arrow IPC files, and stdin/stdout streams.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use arrow::array::{Array, AsArray};
use arrow::datatypes::Float64Type;
use arrow::ipc::reader::{FileReader, StreamReader};
use arrow::record_batch::RecordBatch;
use common::{root, tidemill_ok};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tidemill::cluster::Cluster;
use tidemill::data::encode::{decode, LabelUse, Origin};
use tidemill::spec::Pipeline;

fn read_parquet(path: &Path) -> Vec<RecordBatch> {
    let f = std::fs::File::open(path).unwrap();
    ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap()
        .build()
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn saved_model_predicts_like_the_in_memory_one() {
    let dir = tempfile::tempdir().unwrap();
    let model_path = dir.path().join("model.json");
    let pipeline = Pipeline::load(&root().join("pipelines/quickstart.toml"), &[]).unwrap();
    let report = tidemill::train::run(pipeline, &Cluster::default()).unwrap();
    let file = report.model.unwrap();
    std::fs::write(&model_path, file.to_json().unwrap()).unwrap();
    let fitted = report.fitted.unwrap();

    let data = root().join("datasets/breast_cancer.parquet");
    let out = dir.path().join("pred.parquet");
    tidemill_ok(&[
        "predict",
        "--model",
        &model_path.to_string_lossy(),
        "--input",
        &data.to_string_lossy(),
        "--output",
        &out.to_string_lossy(),
        "--keep",
        "target",
    ]);

    let mut expected = Vec::new();
    let mut row = 0u64;
    for batch in read_parquet(&data) {
        let origin = Origin {
            file: &data,
            row_group: None,
            first_row: row,
        };
        let block = decode(&batch, &file.features, LabelUse::Skip, &origin).unwrap();
        let mut p = [0.0];
        for i in 0..block.rows {
            fitted.predict_row(&block, i, &mut p);
            expected.push(p[0]);
        }
        row += batch.num_rows() as u64;
    }
    let mut got = Vec::new();
    for b in read_parquet(&out) {
        assert_eq!(b.schema().field(0).name(), "target");
        let probs = b
            .column_by_name("probability")
            .unwrap()
            .as_primitive::<Float64Type>();
        got.extend(probs.values().iter().copied());
    }
    assert_eq!(got.len(), 569);
    assert!(
        got == expected,
        "predictions from the saved model differ from the in-memory model"
    );
}

#[test]
fn adult_categoricals_predict_and_eval() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("adult.json");
    let m = model.to_string_lossy().to_string();
    tidemill_ok(&[
        "train",
        "pipelines/adult.toml",
        "--workers",
        "2",
        "--model-out",
        &m,
    ]);

    let out = dir.path().join("pred.arrow");
    tidemill_ok(&[
        "predict",
        "-m",
        &m,
        "-i",
        "datasets/adult.parquet",
        "-o",
        &out.to_string_lossy(),
        "--keep",
        "income,age",
    ]);
    let reader = FileReader::try_new(std::fs::File::open(&out).unwrap(), None).unwrap();
    let (mut rows, mut correct) = (0, 0);
    for b in reader {
        let b = b.unwrap();
        let truth = b.column_by_name("income").unwrap().as_string::<i32>();
        let pred = b.column_by_name("prediction").unwrap().as_string::<i32>();
        let prob = b
            .column_by_name("probability")
            .unwrap()
            .as_primitive::<Float64Type>();
        for i in 0..b.num_rows() {
            assert!((0.0..=1.0).contains(&prob.value(i)));
            assert_eq!(pred.value(i) == ">50K", prob.value(i) > 0.5);
            correct += usize::from(truth.value(i) == pred.value(i));
        }
        rows += b.num_rows();
    }
    assert_eq!(rows, 48_842);
    let accuracy = correct as f64 / rows as f64;
    assert!(accuracy > 0.83, "accuracy {accuracy}");

    let metrics: serde_json::Value = serde_json::from_str(&tidemill_ok(&[
        "eval",
        "-m",
        &m,
        "-i",
        "datasets/adult.parquet",
    ]))
    .unwrap();
    assert_eq!(metrics["rows"], 48_842);
    assert!((metrics["accuracy"].as_f64().unwrap() - accuracy).abs() < 1e-12);
    assert!(metrics["auc"].as_f64().unwrap() > 0.88);
}

#[test]
fn stdin_and_stdout_streams() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.json");
    let m = model.to_string_lossy().to_string();
    tidemill_ok(&[
        "train",
        "pipelines/california_housing.toml",
        "--model-out",
        &m,
    ]);

    // Parquet in, IPC stream on stdout.
    let out = Command::new(env!("CARGO_BIN_EXE_tidemill"))
        .current_dir(root())
        .args([
            "predict",
            "-m",
            &m,
            "-i",
            "datasets/california_housing.parquet",
            "-o",
            "-",
        ])
        .output()
        .unwrap();
    common::assert_success(&out, "predict to stdout");
    let stream = out.stdout;
    let batches: Vec<RecordBatch> = StreamReader::try_new(&stream[..], None)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let n: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(n, 20_640);

    // The IPC stream back in on stdin (needs the feature columns: pipe the data itself).
    let data_stream = {
        let mut buf = Vec::new();
        let batches = read_parquet(&root().join("datasets/california_housing.parquet"));
        let mut w =
            arrow::ipc::writer::StreamWriter::try_new(&mut buf, &batches[0].schema()).unwrap();
        for b in &batches {
            w.write(b).unwrap();
        }
        w.finish().unwrap();
        drop(w);
        buf
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_tidemill"))
        .current_dir(root())
        .args([
            "predict",
            "-m",
            &m,
            "-i",
            "-",
            "-o",
            "-",
            "--keep",
            "MedHouseVal",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&data_stream));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again: Vec<RecordBatch> = StreamReader::try_new(&out.stdout[..], None)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let a: Vec<f64> = batches
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<Float64Type>().values().to_vec())
        .collect();
    let b: Vec<f64> = again
        .iter()
        .flat_map(|b| {
            b.column_by_name("prediction")
                .unwrap()
                .as_primitive::<Float64Type>()
                .values()
                .to_vec()
        })
        .collect();
    assert_eq!(
        a, b,
        "the same rows through a stream predict the same values"
    );
    assert!(again[0].column_by_name("MedHouseVal").unwrap().null_count() == 0);
}
