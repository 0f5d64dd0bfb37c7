//! Helpers shared by the integration tests: running the real binary,
//! reading real Parquet files, writing bad-input fixtures.
#![allow(dead_code, clippy::unwrap_used, clippy::needless_range_loop)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, Float64Type, Schema};
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;

/// The repository root (where `datasets/` and `pipelines/` live).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the `tidemill` binary with `args` from the repository root.
pub fn tidemill(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tidemill"))
        .args(args)
        .current_dir(root())
        .env("TIDEMILL_LOG", "warn")
        .output()
        .expect("the tidemill binary runs")
}

/// Asserts that a finished process succeeded, showing its stderr if not.
pub fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs and asserts success, returning stdout.
pub fn tidemill_ok(args: &[&str]) -> String {
    let out = tidemill(args);
    assert_success(&out, &format!("tidemill {args:?}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Reads whole columns of a Parquet file as f64 (numeric columns only).
pub fn read_columns(path: &Path, columns: &[&str]) -> Vec<Vec<f64>> {
    let file = std::fs::File::open(path).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut out = vec![Vec::new(); columns.len()];
    for batch in reader {
        let batch = batch.unwrap();
        for (j, c) in columns.iter().enumerate() {
            let col =
                arrow::compute::cast(batch.column_by_name(c).unwrap(), &DataType::Float64).unwrap();
            let col = col.as_primitive::<Float64Type>();
            out[j].extend((0..col.len()).map(|i| col.value(i)));
        }
    }
    out
}

/// Column names of a Parquet file.
pub fn column_names(path: &Path) -> Vec<String> {
    let file = std::fs::File::open(path).unwrap();
    let b = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
    b.schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect()
}

/// Writes a Parquet file with the given columns, `rows_per_group` rows per row group.
pub fn write_parquet(path: &Path, columns: Vec<(&str, ArrayRef)>, rows_per_group: usize) {
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|(n, a)| arrow::datatypes::Field::new(*n, a.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ));
    let batch = RecordBatch::try_new(
        schema.clone(),
        columns.into_iter().map(|(_, a)| a).collect(),
    )
    .unwrap();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(rows_per_group.max(1)))
        .build();
    let file = std::fs::File::create(path).unwrap();
    let mut w = ArrowWriter::try_new(file, schema, Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

/// Solves the dense system `a x = b` by Gaussian elimination with partial pivoting.
pub fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Vec<f64> {
    let n = b.len();
    for col in 0..n {
        let piv = (col..n)
            .max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
            .unwrap();
        a.swap(col, piv);
        b.swap(col, piv);
        for r in col + 1..n {
            let f = a[r][col] / a[col][col];
            for c in col..n {
                a[r][c] -= f * a[col][c];
            }
            b[r] -= f * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for r in (0..n).rev() {
        let s: f64 = (r + 1..n).map(|c| a[r][c] * x[c]).sum();
        x[r] = (b[r] - s) / a[r][r];
    }
    x
}

/// Standardises columns the way tidemill does: the population mean and
/// standard deviation of the `f64` values, then `(v − mean) / sd` rounded
/// to `f32`.
pub fn standardize(cols: &[Vec<f64>]) -> Vec<Vec<f64>> {
    cols.iter()
        .map(|c| {
            let n = c.len() as f64;
            let mean = c.iter().sum::<f64>() / n;
            let var = c.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
            let sd = if var > 0.0 { var.sqrt() } else { 1.0 };
            c.iter().map(|&v| ((v - mean) / sd) as f32 as f64).collect()
        })
        .collect()
}

/// A dataset loaded the way tidemill sees it (standardised, features f32-rounded).
pub struct Problem {
    pub x: Vec<Vec<f64>>, // rows × p, standardised like tidemill
    pub y: Vec<f64>,
    pub names: Vec<String>,
}

pub fn load(file: &str, label: &str) -> Problem {
    let path = root().join("datasets").join(file);
    let names: Vec<String> = column_names(&path)
        .into_iter()
        .filter(|n| n != label)
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let cols = standardize(&read_columns(&path, &refs));
    let y = read_columns(&path, &[label]).remove(0);
    let n = cols[0].len();
    let x = (0..n)
        .map(|i| cols.iter().map(|c| c[i]).collect())
        .collect();
    Problem { x, y, names }
}

pub fn sigmoid(m: f64) -> f64 {
    1.0 / (1.0 + (-m).exp())
}

pub fn softplus(m: f64) -> f64 {
    if m > 0.0 {
        m + (-m).exp().ln_1p()
    } else {
        m.exp().ln_1p()
    }
}

pub fn margin(theta: &[f64], x: &[f64]) -> f64 {
    theta[0] + theta[1..].iter().zip(x).map(|(w, v)| w * v).sum::<f64>()
}

pub fn logistic_objective(p: &Problem, theta: &[f64], l2: f64) -> f64 {
    let n = p.y.len() as f64;
    let loss: f64 =
        p.x.iter()
            .zip(&p.y)
            .map(|(x, &y)| {
                let m = margin(theta, x);
                softplus(m) - y * m
            })
            .sum::<f64>()
            / n;
    loss + 0.5 * l2 * theta[1..].iter().map(|w| w * w).sum::<f64>()
}

pub fn ridge_objective(p: &Problem, theta: &[f64], l2: f64) -> f64 {
    let n = p.y.len() as f64;
    let loss: f64 =
        p.x.iter()
            .zip(&p.y)
            .map(|(x, &y)| 0.5 * (y - margin(theta, x)).powi(2))
            .sum::<f64>()
            / n;
    loss + 0.5 * l2 * theta[1..].iter().map(|w| w * w).sum::<f64>()
}

/// The normal equations of ridge regression in f64 (intercept first,
/// unpenalised).
pub fn ridge_closed_form(p: &Problem, l2: f64) -> Vec<f64> {
    let d = p.x[0].len() + 1;
    let n = p.y.len() as f64;
    let mut a = vec![vec![0.0; d]; d];
    let mut b = vec![0.0; d];
    for (x, &y) in p.x.iter().zip(&p.y) {
        let xt: Vec<f64> = std::iter::once(1.0).chain(x.iter().copied()).collect();
        for i in 0..d {
            b[i] += xt[i] * y / n;
            for j in 0..d {
                a[i][j] += xt[i] * xt[j] / n;
            }
        }
    }
    for (i, row) in a.iter_mut().enumerate().skip(1) {
        row[i] += l2;
    }
    solve(a, b)
}

/// `n` free loopback ports (bound, read, released).
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// Writes a hostfile for `n` processes on free loopback ports into `dir`.
pub fn hostfile(dir: &Path, n: usize) -> PathBuf {
    let hosts = dir.join("hosts");
    let lines: String = free_ports(n)
        .iter()
        .map(|p| format!("127.0.0.1:{p}\n"))
        .collect();
    std::fs::write(&hosts, lines).unwrap();
    hosts
}

/// Starts `tidemill args` from the repository root in the background, with
/// stdout and stderr piped and `envs` set (logs at `warn` unless `envs`
/// says otherwise).
pub fn start(args: &[&str], envs: &[(&str, &str)]) -> std::process::Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidemill"));
    cmd.current_dir(root())
        .env("TIDEMILL_LOG", "warn")
        .env_remove("TIDEMILL_CLUSTER_KEY")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.spawn().expect("the tidemill binary starts")
}

/// Waits for a child started by [`start`] for at most `limit`; past that
/// it is killed and the test fails (a process that waits forever is the
/// bug some tests look for).
pub fn finish(mut child: std::process::Child, limit: std::time::Duration) -> Output {
    use std::io::Read;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            child.kill().unwrap();
            child.wait().unwrap();
            let err = String::from_utf8_lossy(&stderr.join().unwrap()).into_owned();
            panic!("tidemill still running after {limit:?}; stderr:\n{err}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// Trains the quickstart pipeline into `dir/model.json` (metrics into
/// `dir/metrics.jsonl`, not the pipeline's own paths) and returns the model path.
pub fn quickstart_model(dir: &Path) -> PathBuf {
    let model = dir.join("model.json");
    let metrics = dir.join("metrics.jsonl");
    tidemill_ok(&[
        "train",
        "pipelines/quickstart.toml",
        "--model-out",
        &model.to_string_lossy(),
        "--metrics-out",
        &metrics.to_string_lossy(),
    ]);
    model
}

/// The record batches of `datasets/FILE`.
pub fn dataset_batches(file: &str) -> Vec<RecordBatch> {
    let f = std::fs::File::open(root().join("datasets").join(file)).unwrap();
    ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap()
        .build()
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// The rows of `datasets/FILE` repeated `copies` times, as an Arrow IPC
/// stream (what `predict -i -` reads).
pub fn ipc_stream(file: &str, copies: usize) -> Vec<u8> {
    let batches = dataset_batches(file);
    let mut buf = Vec::new();
    let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut buf, &batches[0].schema()).unwrap();
    for _ in 0..copies {
        for b in &batches {
            w.write(b).unwrap();
        }
    }
    w.finish().unwrap();
    drop(w);
    buf
}

/// The hidden files beside `name` in `dir` (`.NAME…`: temporary files, the
/// old `.NAME.tmp-PID` ones and tidemill's `.NAME.tidemill-XXXXXXXXXX.tmp`).
pub fn hidden_beside(dir: &Path, name: &str) -> Vec<PathBuf> {
    let prefix = format!(".{name}");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
        })
        .collect();
    v.sort();
    v
}

/// Waits until a training job has written a checkpoint into
/// `checkpoints`: an epoch done, well past its start, scan and cache.
pub fn wait_for_a_checkpoint(checkpoints: &Path) {
    wait_until("an epoch's checkpoint", || {
        std::fs::read_dir(checkpoints).is_ok_and(|d| {
            d.flatten().any(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with("checkpoint-") && name.ends_with(".tmck")
            })
        })
    });
}

/// Polls `ready` until it holds; panics with `what` after a minute (a
/// liveness bound, not a timing assertion).
pub fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "gave up waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Runs `predict` with `model` on `datasets/breast_cancer.parquet` into `out`.
pub fn predict_breast_cancer(model: &Path, out: &Path, extra: &[&str]) -> Output {
    let (m, o) = (model.to_string_lossy(), out.to_string_lossy());
    let mut args = vec![
        "predict",
        "-m",
        &m,
        "-i",
        "datasets/breast_cancer.parquet",
        "-o",
        &o,
    ];
    args.extend(extra);
    tidemill(&args)
}

/// A CSV table of keys (column `id`) `<prefix><row>` for `rows`, at
/// `dir/name` (what `tidemill forget --keys` reads).
pub fn keys_csv(
    dir: &Path,
    name: &str,
    prefix: &str,
    rows: impl Iterator<Item = usize>,
) -> PathBuf {
    let path = dir.join(name);
    let text: String = std::iter::once("id".to_string())
        .chain(rows.map(|i| format!("{prefix}{i}")))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&path, text + "\n").unwrap();
    path
}

/// california_housing's feature columns, in the file's order.
pub const CALIFORNIA_FEATURES: [&str; 8] = [
    "MedInc",
    "HouseAge",
    "AveRooms",
    "AveBedrms",
    "Population",
    "AveOccup",
    "Latitude",
    "Longitude",
];

/// california_housing's label column.
pub const CALIFORNIA_LABEL: &str = "MedHouseVal";

/// california_housing's features and label with a key column `id`
/// (row `i`'s key `key(i)`), the rows `keep` selects, written to
/// `dir/name` in row groups of 1000 (what the exact models' tests key).
pub fn keyed_california(
    dir: &Path,
    name: &str,
    keep: impl Fn(usize) -> bool,
    key: impl Fn(usize) -> String,
) -> PathBuf {
    let src = root().join("datasets/california_housing.parquet");
    let mut names: Vec<&str> = CALIFORNIA_FEATURES.to_vec();
    names.push(CALIFORNIA_LABEL);
    let cols = read_columns(&src, &names);
    let rows: Vec<usize> = (0..cols[0].len()).filter(|&i| keep(i)).collect();
    let mut columns: Vec<(&str, ArrayRef)> = names
        .iter()
        .zip(&cols)
        .map(|(n, c)| {
            let v: Vec<f64> = rows.iter().map(|&i| c[i]).collect();
            (
                *n,
                Arc::new(arrow::array::Float64Array::from(v)) as ArrayRef,
            )
        })
        .collect();
    let ids: Vec<String> = rows.iter().map(|&i| key(i)).collect();
    columns.push((
        "id",
        Arc::new(arrow::array::StringArray::from(ids)) as ArrayRef,
    ));
    let path = dir.join(name);
    write_parquet(&path, columns, 1000);
    path
}

/// Sends SIGTERM to a child started by [`start`].
pub fn sigterm(child: &std::process::Child) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
}

/// Trains `pipeline` (with `--set` `sets`) as one job of 2 processes on
/// this machine, the model written to `model`; both must succeed.
pub fn train_two_processes(pipeline: &str, sets: &[&str], dir: &Path, model: &Path) {
    let hosts = hostfile(dir, 2);
    let children: Vec<_> = (0..2)
        .map(|p| {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidemill"));
            cmd.current_dir(root())
                .env("TIDEMILL_LOG", "warn")
                .args(["train", pipeline, "-n", "2", "-p", &p.to_string()])
                .arg("--hostfile")
                .arg(&hosts)
                .arg("--model-out")
                .arg(model)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped());
            for s in sets {
                cmd.args(["--set", s]);
            }
            cmd.spawn().unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert_success(&out, "a cluster process");
    }
}

/// The Python with scikit-learn to compare with, if any: `TIDEMILL_PYTHON`
/// (CI sets it, and `TIDEMILL_REQUIRE_SKLEARN=1` so that a missing
/// scikit-learn fails instead of skipping).
pub fn sklearn_python() -> Option<String> {
    let python = std::env::var("TIDEMILL_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&python)
        .args(["-c", "import sklearn, pyarrow, numpy"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some(python);
    }
    assert!(
        std::env::var("TIDEMILL_REQUIRE_SKLEARN").as_deref() != Ok("1"),
        "TIDEMILL_REQUIRE_SKLEARN=1 but {python} cannot import scikit-learn, pyarrow and numpy"
    );
    eprintln!("skipped: {python} has no scikit-learn (set TIDEMILL_PYTHON)");
    None
}

/// The `THP_enabled` line of a process's status (`None` on kernels
/// without it).
pub fn thp_enabled(pid: u32) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .map(|v| v.trim().to_string())
}
