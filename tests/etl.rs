//! tidemill between real data tools: the DuckDB CLI and Polars write
//! Parquet, Arrow IPC (file and stream) and CSV, to files and to pipes;
//! `train`, `predict` and `eval` read each of them, and DuckDB and Polars
//! read back what tidemill writes, values and row order checked.
//!
//! The neighbours are found through `TIDEMILL_PYTHON` (a Python with
//! `duckdb`, `polars` and `pyarrow`; the DuckDB CLI beside it or on the
//! PATH). CI installs them and sets `TIDEMILL_REQUIRE_ETL=1`, which turns a
//! missing one into a failure instead of a skip.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::root;

/// The Python and the DuckDB CLI, if both are there.
fn neighbours() -> Option<(String, PathBuf)> {
    let python = std::env::var("TIDEMILL_PYTHON").unwrap_or_else(|_| "python3".into());
    let has_modules = Command::new(&python)
        .args(["-c", "import duckdb, polars, pyarrow"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let beside = Path::new(&python).with_file_name("duckdb");
    let cli = if beside.is_file() {
        Some(beside)
    } else {
        Command::new("duckdb")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
            .then(|| PathBuf::from("duckdb"))
    };
    match (has_modules, cli) {
        (true, Some(cli)) => Some((python, cli)),
        _ => {
            assert!(
                std::env::var("TIDEMILL_REQUIRE_ETL").as_deref() != Ok("1"),
                "TIDEMILL_REQUIRE_ETL=1 but {python} lacks duckdb, polars or pyarrow, or there is no DuckDB CLI"
            );
            eprintln!("skipped: no duckdb + polars + pyarrow and DuckDB CLI (set TIDEMILL_PYTHON)");
            None
        }
    }
}

/// Runs a Python snippet (cwd: the repository root).
fn python(python: &str, code: &str) -> String {
    let out = Command::new(python)
        .args(["-c", code])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `duckdb -c SQL` with its stdout.
fn duckdb(cli: &Path, sql: &str) -> Vec<u8> {
    let out = Command::new(cli)
        .args(["-c", sql])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "duckdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `tidemill ARGS` with `stdin` on its standard input (and `TMPDIR` set to
/// `tmp`, if given).
fn tidemill_fed(args: &[&str], stdin: &[u8], tmp: Option<&Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidemill"));
    if let Some(t) = tmp {
        cmd.env("TMPDIR", t);
    }
    let mut child = cmd
        .args(args)
        .current_dir(root())
        .env("TIDEMILL_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    let bytes = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = pipe.write_all(&bytes);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

fn ok(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The intercept and coefficients of a model file.
fn weights(path: &Path) -> (serde_json::Value, serde_json::Value) {
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    (m["intercept"].clone(), m["coefficients"].clone())
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

#[test]
fn duckdb_and_polars_tables_train_one_model_from_files_and_pipes() {
    let Some((py, cli)) = neighbours() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Every feature as DOUBLE: CSV holds decimal text, which the FLOAT
    // columns of the bundled file would not read back as the same numbers.
    let query =
        "SELECT COLUMNS(* EXCLUDE (target))::DOUBLE, target FROM 'datasets/breast_cancer.parquet'";
    // tidemill's copies of non-Parquet inputs go here, to be counted.
    let tmp = d.join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let fed = |args: &[&str], stdin: &[u8]| tidemill_fed(args, stdin, Some(&tmp));
    // Files: Parquet and CSV from DuckDB, IPC file and stream from Polars.
    duckdb(
        &cli,
        &format!(
            "COPY ({query}) TO '{}' (FORMAT parquet); COPY ({query}) TO '{}' (FORMAT csv, HEADER)",
            s(&d.join("bc.parquet")),
            s(&d.join("bc.csv"))
        ),
    );
    python(
        &py,
        &format!(
            "import polars as pl\nt = pl.read_parquet('{}')\nt.write_ipc('{}')\nt.write_ipc_stream('{}')",
            s(&d.join("bc.parquet")),
            s(&d.join("bc.arrow")),
            s(&d.join("bc.arrows"))
        ),
    );
    let train =
        |input: &str, name: &str, stdin: Option<&[u8]>| -> (serde_json::Value, serde_json::Value) {
            let model = d.join(format!("{name}.json"));
            let set = format!("data.train=\"{input}\"");
            let args = [
                "train",
                "pipelines/quickstart.toml",
                "--set",
                &set,
                "--model-out",
                &s(&model),
            ];
            ok(fed(&args, stdin.unwrap_or_default()), name);
            weights(&model)
        };
    let want = train(&s(&d.join("bc.parquet")), "parquet", None);
    for name in ["bc.csv", "bc.arrow", "bc.arrows"] {
        assert!(
            train(&s(&d.join(name)), name, None) == want,
            "{name}: another model than from the Parquet file"
        );
    }
    // Pipes: the DuckDB CLI's Parquet on stdout, and CSV and an IPC stream.
    let parquet = duckdb(
        &cli,
        &format!("COPY ({query}) TO '/dev/stdout' (FORMAT parquet)"),
    );
    assert!(parquet.starts_with(b"PAR1"));
    assert!(train("-", "stdin-parquet", Some(&parquet)) == want);
    let csv = duckdb(
        &cli,
        &format!("COPY ({query}) TO '/dev/stdout' (FORMAT csv, HEADER)"),
    );
    assert!(train("-", "stdin-csv", Some(&csv)) == want);
    let ipc = std::fs::read(d.join("bc.arrows")).unwrap();
    assert!(train("-", "stdin-ipc", Some(&ipc)) == want);
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "a copy was left"
    );
    let model = d.join("parquet.json");
    // predict: Parquet from DuckDB on stdin, an IPC stream out, read by
    // Polars; the same rows to CSV and Parquet files, read by DuckDB.
    let out = ok(
        fed(
            &[
                "predict",
                "-m",
                &s(&model),
                "-i",
                "-",
                "-o",
                "-",
                "--keep",
                "target",
            ],
            &parquet,
        ),
        "predict - to -",
    );
    std::fs::write(d.join("p.arrows"), &out.stdout).unwrap();
    for (name, input) in [("p.csv", "bc.csv"), ("p.parquet", "bc.arrow")] {
        ok(
            fed(
                &[
                    "predict",
                    "-m",
                    &s(&model),
                    "-i",
                    &s(&d.join(input)),
                    "-o",
                    &s(&d.join(name)),
                    "--keep",
                    "target",
                ],
                b"",
            ),
            name,
        );
    }
    let check = python(
        &py,
        &format!(
            "import duckdb, polars as pl\n\
             a = pl.read_ipc_stream('{arrows}')\n\
             b = duckdb.sql(\"SELECT * FROM '{csv}'\").pl()\n\
             c = duckdb.sql(\"SELECT * FROM '{parquet}'\").pl()\n\
             src = duckdb.sql(\"SELECT target FROM '{bc}'\").pl()\n\
             assert a.height == b.height == c.height == src.height == 569, (a.height, b.height, c.height)\n\
             assert a['target'].to_list() == src['target'].to_list() == b['target'].to_list() == c['target'].to_list()\n\
             assert a['probability'].to_list() == c['probability'].to_list()\n\
             assert max(abs(x - y) for x, y in zip(a['probability'], b['probability'])) == 0.0\n\
             acc = (a['prediction'].cast(pl.Int64) == a['target']).mean()\n\
             print(acc)",
            arrows = s(&d.join("p.arrows")),
            csv = s(&d.join("p.csv")),
            parquet = s(&d.join("p.parquet")),
            bc = s(&d.join("bc.parquet")),
        ),
    );
    let accuracy: f64 = check.trim().parse().unwrap();
    assert!(accuracy > 0.95, "accuracy {accuracy}");
    // eval: CSV on stdin.
    let out = ok(
        fed(&["eval", "-m", &s(&model), "-i", "-"], &csv),
        "eval CSV on stdin",
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["rows"], 569, "{v}");
}

#[test]
fn stdin_training_data_is_refused_where_it_cannot_be_read() {
    let dir = tempfile::tempdir().unwrap();
    // Two processes: stdin reaches one.
    let hosts = common::hostfile(dir.path(), 2);
    let out = common::tidemill(&[
        "train",
        "pipelines/quickstart.toml",
        "--set",
        "data.train=\"-\"",
        "-n",
        "2",
        "-p",
        "0",
        "--hostfile",
        &s(&hosts),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("data.train") && err.contains("stdin"), "{err}");
    // A restarted job cannot read stdin again.
    let out = common::tidemill(&[
        "train",
        "pipelines/quickstart.toml",
        "--set",
        "data.train=\"-\"",
        "--set",
        &format!("output.checkpoint=\"{}\"", s(&dir.path().join("ck"))),
        "--max-restarts",
        "2",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--max-restarts"), "{err}");
    // Named twice.
    let out = tidemill_fed(
        &[
            "train",
            "pipelines/quickstart.toml",
            "--set",
            "data.train=[\"-\", \"-\"]",
        ],
        b"",
        None,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("named twice"), "{err}");
}

/// `predict --threshold`: a binary classifier's label is its second class
/// exactly where the probability is above the threshold; the probabilities
/// do not change. Other models, and a threshold that is not a probability,
/// are refused before anything is written.
#[test]
fn a_threshold_moves_the_decision_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.json");
    common::tidemill_ok(&[
        "train",
        "pipelines/quickstart.toml",
        "--model-out",
        &s(&model),
    ]);
    let score = |extra: &[&str], name: &str| -> Vec<Vec<f64>> {
        let out = dir.path().join(name);
        let done = common::predict_breast_cancer(&model, &out, extra);
        common::assert_success(&done, name);
        vec![
            predicted(&out),
            common::read_columns(&out, &["probability"]).remove(0),
        ]
    };
    let plain = score(&[], "plain.parquet");
    let strict = score(&["--threshold", "0.9"], "strict.parquet");
    assert_eq!(plain[1], strict[1], "the probabilities moved");
    for (i, &p) in strict[1].iter().enumerate() {
        assert_eq!(
            strict[0][i],
            f64::from(u8::from(p > 0.9)),
            "row {i}: p = {p}"
        );
        assert_eq!(
            plain[0][i],
            f64::from(u8::from(p > 0.5)),
            "row {i}: p = {p}"
        );
    }
    assert!(strict[0].iter().sum::<f64>() < plain[0].iter().sum::<f64>());
    for bad in ["1.5", "0", "NaN"] {
        let out = dir.path().join("bad.parquet");
        let r = common::predict_breast_cancer(&model, &out, &["--threshold", bad]);
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(2), "{bad}: {err}");
        assert!(err.contains("strictly between 0 and 1"), "{err}");
        assert!(!out.exists());
    }
    let softmax = dir.path().join("digits.json");
    common::tidemill_ok(&[
        "train",
        "pipelines/digits.toml",
        "--set",
        "train.epochs=1",
        "--model-out",
        &s(&softmax),
    ]);
    let r = common::tidemill(&[
        "predict",
        "-m",
        &s(&softmax),
        "-i",
        "datasets/digits.parquet",
        "-o",
        &s(&dir.path().join("d.parquet")),
        "--threshold",
        "0.7",
    ]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(2), "{err}");
    assert!(err.contains("binary classifiers"), "{err}");
}

/// The `prediction` column of a predictions file, as numbers.
fn predicted(path: &Path) -> Vec<f64> {
    use arrow::array::{Array, StringArray};
    let file = std::fs::File::open(path).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let col = batch.column_by_name("prediction").unwrap();
        let col = col.as_any().downcast_ref::<StringArray>().unwrap();
        out.extend((0..col.len()).map(|i| col.value(i).parse::<f64>().unwrap()));
    }
    out
}
