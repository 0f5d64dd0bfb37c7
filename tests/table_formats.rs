//! Table formats in and out, with real files and pipes: `predict` reads
//! Parquet and Arrow IPC files and streams from a path or from stdin (told
//! apart by their first bytes), writes the format its output's extension
//! names (CSV included), and refuses an extension it does not know rather
//! than write Parquet under another name.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{quickstart_model, read_columns, root};

const DATA: &str = "datasets/breast_cancer.parquet";

/// `predict --model MODEL --input - --output OUT` with `stdin` piped in,
/// temporary files under `tmp`.
fn predict_stdin(model: &Path, out: &Path, stdin: Vec<u8>, tmp: &Path) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidemill"));
    cmd.env("TMPDIR", tmp)
        .args(["--log", "warn", "predict", "--model"])
        .arg(model)
        .args(["--input", "-", "--output"])
        .arg(out);
    with_stdin(cmd, stdin)
}

/// Runs `cmd` in the repository with `stdin` written into its stdin.
fn with_stdin(mut cmd: Command, stdin: Vec<u8>) -> Output {
    let mut child = cmd
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = pipe.write_all(&stdin);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

fn predict(model: &Path, input: &str, out: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tidemill"))
        .current_dir(root())
        .args(["--log", "warn", "predict", "--model"])
        .arg(model)
        .args(["--input", input, "--output"])
        .arg(out)
        .output()
        .unwrap()
}

fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The bundled table as an Arrow IPC file, written by arrow-rs.
fn ipc_file() -> Vec<u8> {
    let batches = common::dataset_batches("breast_cancer.parquet");
    let mut buf = Vec::new();
    let mut w = arrow::ipc::writer::FileWriter::try_new(&mut buf, &batches[0].schema()).unwrap();
    for b in &batches {
        w.write(b).unwrap();
    }
    w.finish().unwrap();
    drop(w);
    buf
}

#[test]
fn stdin_takes_parquet_and_ipc_files_and_leaves_no_spool_behind() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let model = quickstart_model(dir.path());
    let reference = dir.path().join("from-file.parquet");
    ok(&predict(&model, DATA, &reference), "from the file");
    let want = read_columns(&reference, &["prediction", "probability"]);

    let parquet = std::fs::read(root().join(DATA)).unwrap();
    for (name, bytes) in [("parquet", parquet), ("ipc-file", ipc_file())] {
        let out = dir.path().join(format!("{name}.parquet"));
        ok(
            &predict_stdin(&model, &out, bytes, &tmp),
            &format!("{name} on stdin"),
        );
        assert_eq!(
            read_columns(&out, &["prediction", "probability"]),
            want,
            "{name} on stdin"
        );
    }
    // The spooled copies of stdin are gone.
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
}

#[test]
fn the_output_format_is_the_extensions_and_an_unknown_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = quickstart_model(dir.path());
    let parquet = dir.path().join("p.parquet");
    ok(&predict(&model, DATA, &parquet), "parquet");
    let want = read_columns(&parquet, &["prediction", "probability"]);

    let csv = dir.path().join("p.csv");
    ok(&predict(&model, DATA, &csv), "csv");
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("prediction,probability"));
    let rows: Vec<(f64, f64)> = lines
        .map(|l| {
            let (a, b) = l.split_once(',').unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect();
    assert_eq!(rows.len(), want[0].len());
    for (i, (p, q)) in rows.iter().enumerate() {
        // Written as the shortest text that reads back to the same f64.
        assert_eq!((*p, *q), (want[0][i], want[1][i]), "row {i}");
    }

    // An IPC file by its extension.
    let arrow = dir.path().join("p.arrow");
    ok(&predict(&model, DATA, &arrow), "arrow");
    assert_eq!(&std::fs::read(&arrow).unwrap()[..6], b"ARROW1");

    // Not a silent Parquet file under another name: exit 2, nothing written.
    let txt = dir.path().join("p.txt");
    let out = predict(&model, DATA, &txt);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--output") && stderr.contains(".csv"),
        "{stderr}"
    );
    assert!(!txt.exists());
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains("p.txt"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn csv_is_read_from_a_path_and_from_stdin_typed_by_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let model = quickstart_model(dir.path());
    let reference = dir.path().join("from-parquet.parquet");
    ok(&predict(&model, DATA, &reference), "from Parquet");
    let want = read_columns(&reference, &["probability"]);

    let mut csv = Vec::new();
    {
        let mut w = arrow::csv::Writer::new(&mut csv);
        for b in common::dataset_batches("breast_cancer.parquet") {
            w.write(&b).unwrap();
        }
    }
    let path = dir.path().join("table.csv");
    std::fs::write(&path, &csv).unwrap();
    let from_path = dir.path().join("from-csv.parquet");
    ok(
        &predict(&model, &path.to_string_lossy(), &from_path),
        "a .csv file",
    );
    let from_stdin = dir.path().join("from-stdin.parquet");
    ok(
        &predict_stdin(&model, &from_stdin, csv, &tmp),
        "CSV on stdin",
    );
    for got in [&from_path, &from_stdin] {
        let got = read_columns(got, &["probability"]);
        assert_eq!(got[0].len(), want[0].len());
        // The f32 features went through decimal text: the same to ~1e-7.
        for (a, b) in got[0].iter().zip(&want[0]) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);

    // A ragged row: exit 4, named as CSV.
    let bad = dir.path().join("bad.csv");
    let text = String::from_utf8(std::fs::read(&path).unwrap()).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines[5] = "1,2";
    std::fs::write(&bad, lines.join("\n")).unwrap();
    let out = predict(
        &model,
        &bad.to_string_lossy(),
        &dir.path().join("x.parquet"),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("not readable as CSV"), "{stderr}");
}

/// Categories that look like numbers or booleans (`01`, `true`) stay the
/// text they are in a CSV input: the same predictions as from Parquet, bit
/// for bit, and `--keep` copies them unchanged.
#[test]
fn csv_categories_that_look_like_numbers_stay_text() {
    use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let codes = ["01", "02", "03", "10"];
    let n = 400;
    let code: Vec<&str> = (0..n).map(|i| codes[i % 4]).collect();
    let flag: Vec<&str> = (0..n)
        .map(|i| if i % 3 == 0 { "true" } else { "false" })
        .collect();
    let y: Vec<i64> = (0..n)
        .map(|i| i64::from(i % 4 < 2) ^ i64::from(i % 7 == 0))
        .collect();
    let x: Vec<f64> = (0..n).map(|i| (i % 5) as f64).collect();
    let parquet = dir.path().join("cat.parquet");
    common::write_parquet(
        &parquet,
        vec![
            (
                "code",
                Arc::new(StringArray::from(code.clone())) as ArrayRef,
            ),
            (
                "flag",
                Arc::new(StringArray::from(flag.clone())) as ArrayRef,
            ),
            ("x", Arc::new(Float64Array::from(x.clone())) as ArrayRef),
            ("y", Arc::new(Int64Array::from(y.clone())) as ArrayRef),
        ],
        100,
    );
    let csv = dir.path().join("cat.csv");
    let mut text = String::from("code,flag,x,y\n");
    for i in 0..n {
        text += &format!("{},{},{},{}\n", code[i], flag[i], x[i], y[i]);
    }
    std::fs::write(&csv, text).unwrap();
    let pipeline = dir.path().join("cat.toml");
    std::fs::write(
        &pipeline,
        format!(
            "[data]\ntrain = \"{}\"\nlabel = \"y\"\ncategorical = [\"code\", \"flag\"]\nhash_bits = 8\n\n[model]\nkind = \"logistic\"\nl2 = 0.01\n\n[optimizer]\nkind = \"lbfgs\"\n\n[train]\nepochs = 50\n",
            parquet.display()
        ),
    )
    .unwrap();
    let model = dir.path().join("cat.json");
    let out = Command::new(env!("CARGO_BIN_EXE_tidemill"))
        .current_dir(root())
        .args(["--log", "warn", "train"])
        .arg(&pipeline)
        .arg("--model-out")
        .arg(&model)
        .output()
        .unwrap();
    ok(&out, "train");
    let keep = |input: &Path, out: &Path| {
        Command::new(env!("CARGO_BIN_EXE_tidemill"))
            .current_dir(root())
            .args(["--log", "warn", "predict", "--model"])
            .arg(&model)
            .arg("--input")
            .arg(input)
            .arg("--output")
            .arg(out)
            .args(["--keep", "code,flag"])
            .output()
            .unwrap()
    };
    let (a, b) = (dir.path().join("a.csv"), dir.path().join("b.csv"));
    ok(&keep(&parquet, &a), "from Parquet");
    ok(&keep(&csv, &b), "from CSV");
    let (a, b) = (
        std::fs::read_to_string(&a).unwrap(),
        std::fs::read_to_string(&b).unwrap(),
    );
    assert_eq!(a, b, "CSV input changed the categories");
    assert!(a.lines().nth(1).unwrap().starts_with("01,true,"), "{a}");
}

#[test]
fn a_stream_refuses_csv_and_leaves_no_copy_of_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let csv = dir.path().join("t.csv");
    std::fs::write(&csv, "a,b\n1,2\n").unwrap();
    let stream = |input: &str, stdin: Vec<u8>, extra: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidemill"));
        cmd.env("TMPDIR", &tmp)
            .args(["--log", "warn", "stream", "pipelines/quickstart.toml"])
            .args(["--set", "optimizer.kind=\"adagrad\"", "--input", input])
            .arg("--model-out")
            .arg(dir.path().join("m.json"))
            .args(extra);
        with_stdin(cmd, stdin)
    };
    for (input, bytes) in [
        (csv.to_string_lossy().to_string(), Vec::new()),
        ("-".to_string(), b"a,b\n1,2\n".to_vec()),
    ] {
        let out = stream(&input, bytes, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{input}: {stderr}");
        assert!(stderr.contains("is CSV"), "{stderr}");
    }
    // Parquet on stdin, and the stream then refused (a bad
    // --predictions-out): the copy of stdin is gone all the same.
    let parquet = std::fs::read(root().join(DATA)).unwrap();
    let out = stream("-", parquet, &["--predictions-out", "p.txt"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
}

/// An input without rows is still checked against the model's columns
/// (there is no batch to fail on): a header-only CSV of other columns is
/// exit 4, an empty table of the right ones an empty output.
#[test]
fn an_input_without_rows_is_checked_for_the_models_columns() {
    let dir = tempfile::tempdir().unwrap();
    let model = quickstart_model(dir.path());
    let header = dir.path().join("header.csv");
    std::fs::write(&header, "a,b\n").unwrap();
    let out = predict(
        &model,
        &header.to_string_lossy(),
        &dir.path().join("x.parquet"),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("not found"), "{stderr}");

    let batches = common::dataset_batches("breast_cancer.parquet");
    let empty = dir.path().join("empty.parquet");
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&empty).unwrap(),
        batches[0].schema(),
        None,
    )
    .unwrap();
    w.write(&batches[0].slice(0, 0)).unwrap();
    w.close().unwrap();
    let csv = dir.path().join("empty-out.csv");
    ok(
        &predict(&model, &empty.to_string_lossy(), &csv),
        "empty input",
    );
    assert_eq!(
        std::fs::read_to_string(&csv).unwrap(),
        "prediction,probability\n"
    );
}
