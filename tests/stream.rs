//! `tidemill stream` with real processes, real pipes and real signals:
//! nycflights13 in time order through the replay source and through an
//! Arrow IPC stream on stdin (written by pyarrow where it is installed),
//! on 1, 2 and 4 workers and 2 processes, gives the same model bit for
//! bit; progressive validation scores each row before training on it; a
//! stream killed with SIGKILL resumes to the uninterrupted model; SIGTERM
//! stops it at a batch end with a snapshot and exit 0.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{finish, hostfile, root, start, thp_enabled, wait_until};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const PIPELINE: &str = "pipelines/nycflights.toml";

/// Settings every run here shares: batches of 20 000 rows in time order.
fn settings(extra: &[&str]) -> Vec<String> {
    let mut v = vec![
        "--set".to_string(),
        "stream.snapshot_every=1".into(),
        "--set".into(),
        "stream.batch_rows=20000".into(),
        "--set".into(),
        "stream.order_by=\"time_hour\"".into(),
    ];
    for e in extra {
        v.push("--set".into());
        v.push(e.to_string());
    }
    v
}

/// The progressive validation in `predictions` (nycflights13's): the mean
/// log loss of the scores is the reported `loss`, and the first step's
/// rows were scored by the untrained model (p = 0.5). Returns the scores.
fn check_progressive(predictions: &Path, loss: f64) -> Vec<f64> {
    let mut cols = common::read_columns(predictions, &["late15", "probability"]);
    let (y, p) = (&cols[0], &cols[1]);
    assert_eq!(y.len(), 327346);
    let recomputed: f64 = y
        .iter()
        .zip(p)
        .map(|(&y, &p)| -(if y == 1.0 { p } else { 1.0 - p }).ln())
        .sum::<f64>()
        / y.len() as f64;
    assert!(
        (recomputed - loss).abs() < 1e-9,
        "progressive loss {loss}, recomputed from the predictions {recomputed}"
    );
    assert!(p[..2048].iter().all(|&p| p == 0.5), "scored after training");
    cols.swap_remove(1)
}

/// `stream PIPELINE --input INPUT --model-out MODEL ARGS…`, finished.
fn stream(input: &str, model: &Path, args: &[String], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidemill"));
    cmd.current_dir(root())
        .env("TIDEMILL_LOG", "warn")
        .args(["stream", PIPELINE, "--input", input, "--model-out"])
        .arg(model)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(bytes) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        let bytes = bytes.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&bytes);
        });
    }
    finish(child, Duration::from_secs(120))
}

fn ok(out: &Output, what: &str) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A model file without the input it came from (the one thing a replay
/// and stdin stamp differently).
fn weights(path: &Path) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    v["stream"].as_object_mut().unwrap().remove("input");
    v
}

/// nycflights13 sorted by `time_hour` (ties in file order) as an Arrow IPC
/// stream: written by pyarrow when `TIDEMILL_PYTHON` (or `python3`) has
/// it, else by arrow-rs (CI sets `TIDEMILL_REQUIRE_PYARROW=1`).
fn sorted_ipc() -> Vec<u8> {
    let python = std::env::var("TIDEMILL_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = r#"
import sys, pyarrow as pa, pyarrow.parquet as pq, pyarrow.compute as pc
t = pq.read_table(sys.argv[1])
t = t.append_column("__row", pa.array(range(t.num_rows), pa.int64()))
t = t.sort_by([("time_hour", "ascending"), ("__row", "ascending")]).drop_columns(["__row"])
with pa.ipc.new_stream(sys.stdout.buffer, t.schema) as w:
    for b in t.to_batches(max_chunksize=3000):
        w.write_batch(b)
"#;
    let out = Command::new(&python)
        .args(["-c", script])
        .arg(root().join("datasets/nycflights13.parquet"))
        .output();
    match out {
        Ok(o) if o.status.success() => return o.stdout,
        other => {
            assert!(
                std::env::var_os("TIDEMILL_REQUIRE_PYARROW").is_none(),
                "pyarrow is required here and {python} could not write the stream: {other:?}"
            );
            eprintln!("note: no pyarrow ({python}): the IPC stream is written by arrow-rs");
        }
    }
    use arrow::array::{ArrayRef, UInt32Array};
    use arrow::compute::{lexsort_to_indices, take_record_batch, SortColumn};
    let f = std::fs::File::open(root().join("datasets/nycflights13.parquet")).unwrap();
    let batches: Vec<_> = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap()
        .build()
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let whole = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    let rows: ArrayRef =
        std::sync::Arc::new(UInt32Array::from_iter_values(0..whole.num_rows() as u32));
    let order = lexsort_to_indices(
        &[
            SortColumn {
                values: whole.column_by_name("time_hour").unwrap().clone(),
                options: None,
            },
            SortColumn {
                values: rows,
                options: None,
            },
        ],
        None,
    )
    .unwrap();
    let sorted = take_record_batch(&whole, &order).unwrap();
    let mut buf = Vec::new();
    let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut buf, &sorted.schema()).unwrap();
    let mut at = 0;
    while at < sorted.num_rows() {
        let n = (sorted.num_rows() - at).min(3000);
        w.write(&sorted.slice(at, n)).unwrap();
        at += n;
    }
    w.finish().unwrap();
    drop(w);
    buf
}

#[test]
fn replay_and_stdin_on_any_worker_count_give_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    let model = |name: &str| dir.path().join(format!("{name}.json"));
    let data = "datasets/nycflights13.parquet";
    let predictions = dir.path().join("predictions.parquet");
    let mut args = settings(&[]);
    args.extend([
        "--predictions-out".into(),
        predictions.display().to_string(),
    ]);
    args.extend(["--keep".into(), "late15".into()]);
    let reference = ok(
        &stream(data, &model("w1"), &args, None),
        "replay on 1 worker",
    );
    let progressive = &reference["progressive"];
    assert_eq!(progressive["rows"], 327346);
    let loss = progressive["loss"].as_f64().unwrap();
    // A replay ends: its summary has the whole stream's AUC.
    assert!(progressive["auc"].as_f64().is_some_and(|a| a > 0.5));

    // Progressive validation, checked against the written predictions: the
    // mean log loss of the scores is the reported one, and the first
    // batch's rows were scored by the untrained model (p = 0.5).
    let p = check_progressive(&predictions, loss);
    assert!(p[20000..].iter().any(|&p| p != 0.5));

    for w in ["2", "4"] {
        let out = stream(
            data,
            &model(w),
            &[settings(&[]), vec!["-w".into(), w.into()]].concat(),
            None,
        );
        ok(&out, &format!("replay on {w} workers"));
        assert!(
            weights(&model(w)) == weights(&model("w1")),
            "replay on {w} workers: the model differs from 1 worker's"
        );
    }

    let ipc = sorted_ipc();
    let mut args = settings(&[]);
    args.retain(|a| !a.contains("order_by"));
    args.pop(); // the --set before order_by
    args.extend(["-w".into(), "2".into()]);
    let out = stream("-", &model("stdin"), &args, Some(&ipc));
    let summary = ok(&out, "stdin on 2 workers");
    assert_eq!(summary["progressive"]["loss"].as_f64(), Some(loss));
    // A live source keeps no score per row (bounded memory): no AUC.
    assert!(summary["progressive"]["auc"].is_null(), "{summary}");
    assert!(
        weights(&model("stdin")) == weights(&model("w1")),
        "stdin: the model differs from the replay's"
    );

    // Two processes, one worker each.
    let p0 = on_two_processes(dir.path(), "p", data, &[]);
    assert!(
        weights(&p0) == weights(&model("w1")),
        "2 processes: the model differs"
    );
    assert!(
        !dir.path().join("p-p1.json").exists(),
        "process 1 wrote a model"
    );
}

fn checkpoints(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |e| {
        e.filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmck"))
            .count()
    })
}

/// A replay of nycflights13 with `args`, paced so that it is mid-way when
/// `ck` holds three checkpoints, killed with SIGKILL there.
fn killed_after_three_checkpoints(model: &Path, ck: &Path, args: &[String]) {
    let mut a: Vec<String> = vec![
        "stream".into(),
        PIPELINE.into(),
        "--input".into(),
        "datasets/nycflights13.parquet".into(),
        "--model-out".into(),
        model.display().to_string(),
        "--rate".into(),
        "100000".into(),
    ];
    a.extend_from_slice(args);
    let argv: Vec<&str> = a.iter().map(String::as_str).collect();
    let child = start(&argv, &[]);
    wait_until("three checkpoints", || checkpoints(ck) >= 3);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    let out = finish(child, Duration::from_secs(30));
    assert_eq!(out.status.code(), None, "it ended before the kill");
}

#[test]
fn a_stream_killed_mid_way_resumes_to_the_uninterrupted_model() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    let reference = dir.path().join("reference.json");
    let model = dir.path().join("model.json");
    let args = |ck: &Path| {
        settings(&[
            "stream.batch_rows=5000",
            &format!("output.checkpoint=\"{}\"", ck.display()),
            "optimizer.kind=\"ftrl\"",
            "model.l1=0.00001",
        ])
    };
    ok(
        &stream(
            "datasets/nycflights13.parquet",
            &reference,
            &args(&dir.path().join("ck0")),
            None,
        ),
        "uninterrupted",
    );

    // Replay: killed after a few checkpoints (paced so that it is mid-way).
    killed_after_three_checkpoints(&model, &ck, &args(&ck));
    let resumed = ok(
        &stream(
            "datasets/nycflights13.parquet",
            &model,
            &[args(&ck), vec!["--resume".into()]].concat(),
            None,
        ),
        "resumed replay",
    );
    assert!(resumed["rows_this_run"].as_u64().unwrap() < 327346);
    assert!(
        weights(&model) == weights(&reference),
        "replay killed and resumed: the model differs"
    );

    // Stdin: the producer sends the stream again from its start; the rows
    // the checkpoint holds are passed over.
    let ipc = sorted_ipc();
    let ck2 = dir.path().join("ck2");
    let mut sargs = args(&ck2);
    let i = sargs.iter().position(|a| a.contains("order_by")).unwrap();
    sargs.drain(i - 1..=i);
    let half = &ipc[..ipc.len() / 2];
    let out = stream("-", &model, &sargs, Some(half));
    // Half an IPC stream is cut mid-message: the source fails, after the
    // batches before it were checkpointed.
    assert!(!out.status.success(), "a truncated IPC stream was accepted");
    assert!(checkpoints(&ck2) >= 1);
    let out = stream(
        "-",
        &model,
        &[sargs, vec!["--resume".into()]].concat(),
        Some(&ipc),
    );
    ok(&out, "resumed stdin");
    assert!(
        weights(&model) == weights(&reference),
        "stdin cut and resumed: the model differs"
    );
}

#[test]
fn sigterm_stops_a_live_stream_at_a_batch_end_with_a_loadable_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.json");
    let ck = dir.path().join("ck");
    let checkpoint = format!("output.checkpoint=\"{}\"", ck.display());
    let mut child = live_stream(&model, &["--set", &checkpoint]);
    // Three batches' rows, and the stream left open (a live producer).
    let w = feed_open(&mut child, 9000);
    // The three batches trained (each one snapshotted), the stream idle.
    wait_for_snapshot(&model, 9000);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let out = finish(child, Duration::from_secs(60));
    drop(w);
    let summary = ok(&out, "stopped stream");
    assert_eq!(summary["stopped_by"], "SIGTERM", "{summary}");
    assert_eq!(summary["rows"], 9000);
    let snapshot = weights(&model);
    assert_eq!(snapshot["stream"]["rows"], 9000);
    assert!(checkpoints(&ck) >= 1, "no checkpoint where it stopped");
    // The snapshot is a model predict loads.
    let pred = dir.path().join("p.parquet");
    let out = common::tidemill(&[
        "predict",
        "--model",
        &model.to_string_lossy(),
        "--input",
        "datasets/nycflights13.parquet",
        "--output",
        &pred.to_string_lossy(),
    ]);
    common::assert_success(&out, "predict with the snapshot");
}

#[test]
fn a_bad_value_fails_with_its_location_and_writes_nothing_half() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("bad.parquet");
    let n = 5000;
    let x: Vec<Option<f64>> = (0..n)
        .map(|i| {
            if i == 4321 {
                None
            } else {
                Some(i as f64 / 100.0)
            }
        })
        .collect();
    let y: Vec<f64> = (0..n).map(|i| f64::from(i % 3 == 0)).collect();
    common::write_parquet(
        &data,
        vec![
            (
                "x",
                std::sync::Arc::new(arrow::array::Float64Array::from(x)),
            ),
            (
                "y",
                std::sync::Arc::new(arrow::array::Float64Array::from(y)),
            ),
        ],
        1000,
    );
    let pipeline = dir.path().join("p.toml");
    std::fs::write(
        &pipeline,
        format!(
            "[data]\ntrain = \"{}\"\nlabel = \"y\"\n[model]\nkind = \"logistic\"\n[optimizer]\nkind = \"sgd\"\nbatch_size = 100\n[stream]\nbatch_rows = 1000\nsnapshot_every = 1\n",
            data.display()
        ),
    )
    .unwrap();
    let model = dir.path().join("m.json");
    let out = common::tidemill(&[
        "stream",
        &pipeline.to_string_lossy(),
        "--input",
        &data.to_string_lossy(),
        "--model-out",
        &model.to_string_lossy(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("bad.parquet") && stderr.contains("'x'") && stderr.contains("4321"),
        "{stderr}"
    );
    // The snapshots before the bad batch stand, whole; nothing half-written.
    let snap = weights(&model);
    assert_eq!(snap["stream"]["rows"], 4000);
    assert!(common::hidden_beside(dir.path(), "m.json").is_empty());
}

/// A stream keeps one replica per worker: a fixed `train.replicas` would
/// be ignored, so it is refused before anything is read or written.
#[test]
fn a_stream_refuses_fixed_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.json");
    let out = stream(
        "datasets/nycflights13.parquet",
        &model,
        &settings(&["train.strategy=\"model-average\"", "train.replicas=2"]),
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("train.replicas"), "{stderr}");
    assert!(!model.exists());
}

/// Rows `from..from + n` of nycflights13 written to `path`.
fn nyc_part(path: &Path, from: usize, n: usize) {
    let f = std::fs::File::open(root().join("datasets/nycflights13.parquet")).unwrap();
    let batches: Vec<_> = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap()
        .build()
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let whole = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    let part = whole.slice(from, n);
    let out = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(out, part.schema(), None).unwrap();
    w.write(&part).unwrap();
    w.close().unwrap();
}

/// [`nyc_part`] as a writer into a watched directory does it: written
/// under a hidden name, then renamed into place.
fn nyc_arrive(path: &Path, from: usize, n: usize) {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let hidden = path.with_file_name(format!(".{name}.tmp"));
    nyc_part(&hidden, from, n);
    std::fs::rename(&hidden, path).unwrap();
}

/// The model's `stream.rows`, once it exists.
fn snapshot_rows(model: &Path) -> Option<u64> {
    std::fs::read(model)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["stream"]["rows"].as_u64())
}

#[test]
fn a_watched_directory_reads_each_renamed_file_once_and_serves_its_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let inbox = dir.path().join("inbox");
    std::fs::create_dir(&inbox).unwrap();
    let model = dir.path().join("model.json");
    let port = common::free_ports(1)[0];
    nyc_part(&inbox.join("part-000.parquet"), 0, 10000);
    let args: Vec<String> = vec![
        "stream".into(),
        PIPELINE.into(),
        "--input".into(),
        inbox.display().to_string(),
        "--watch".into(),
        "--watch-every".into(),
        "0.05".into(),
        "--model-out".into(),
        model.display().to_string(),
        "--metrics-addr".into(),
        format!("127.0.0.1:{port}"),
        "--set".into(),
        "stream.snapshot_every=1".into(),
        "--set".into(),
        "stream.batch_rows=5000".into(),
        // A file's tail shorter than a batch is trained after 0.2 s.
        "--set".into(),
        "stream.batch_seconds=0.2".into(),
        "--set".into(),
        format!("output.checkpoint=\"{}\"", dir.path().join("ck").display()),
        "-w".into(),
        "2".into(),
    ];
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let child = start(&argv, &[]);
    wait_until("the first file trained", || {
        snapshot_rows(&model) == Some(10000)
    });

    // A file being written (under a hidden name) is never read, however
    // long it waits; renamed into place, it is read once.
    let hidden = inbox.join(".part-001.parquet.tmp");
    nyc_part(&hidden, 10000, 10000);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(snapshot_rows(&model), Some(10000), "a hidden file was read");
    std::fs::rename(&hidden, inbox.join("part-001.parquet")).unwrap();
    wait_until("the second file trained", || {
        snapshot_rows(&model) == Some(20000)
    });
    nyc_arrive(&inbox.join("part-002.parquet"), 20000, 7000);
    wait_until("the third file trained", || {
        snapshot_rows(&model) == Some(27000)
    });

    // A real HTTP client scrapes the gauges (set just after the snapshot).
    let scrape = || {
        ureq::get(&format!("http://127.0.0.1:{port}/metrics"))
            .call()
            .unwrap()
            .into_body()
            .read_to_string()
            .unwrap()
    };
    wait_until("the gauges of the third file", || {
        scrape().contains("tidemill_stream_rows_total 27000")
    });
    let body = scrape();
    assert!(body.contains("tidemill_stream_snapshots_total"), "{body}");
    assert!(
        body.contains("# TYPE tidemill_stream_progressive_loss gauge"),
        "{body}"
    );

    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let summary = ok(&finish(child, Duration::from_secs(60)), "watched stream");
    assert_eq!(summary["rows"], 27000, "{summary}");
    assert_eq!(summary["stopped_by"], "SIGTERM");

    // Each file once, in name order: the replay of the same directory.
    let replay = dir.path().join("replay.json");
    let out = stream(
        &inbox.display().to_string(),
        &replay,
        &[
            "--set".into(),
            "stream.batch_rows=5000".into(),
            "--set".into(),
            "stream.snapshot_every=1".into(),
        ],
        None,
    );
    ok(&out, "replay of the directory");
    let (mut a, mut b) = (weights(&model), weights(&replay));
    for v in [&mut a, &mut b] {
        v["stream"].as_object_mut().unwrap().remove("snapshot");
    }
    assert!(
        a == b,
        "the watched stream's model differs from the replay's"
    );

    // Resumed after the files read were archived (removed) and a new one
    // arrived: only the new one is read, whole.
    std::fs::remove_file(inbox.join("part-000.parquet")).unwrap();
    std::fs::remove_file(inbox.join("part-001.parquet")).unwrap();
    nyc_arrive(&inbox.join("part-003.parquet"), 27000, 3000);
    let mut resumed_args = args.clone();
    let i = resumed_args
        .iter()
        .position(|a| a == "--metrics-addr")
        .unwrap();
    resumed_args.drain(i..=i + 1);
    resumed_args.push("--resume".into());
    let argv: Vec<&str> = resumed_args.iter().map(String::as_str).collect();
    let child = start(&argv, &[]);
    wait_until("the new file trained", || {
        snapshot_rows(&model) == Some(30000)
    });
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let summary = ok(&finish(child, Duration::from_secs(60)), "resumed watch");
    assert_eq!(summary["rows_this_run"], 3000, "{summary}");
    assert_eq!(summary["rows"], 30000, "{summary}");
}

/// A stream of a watched directory holding one 4000-row file, on two
/// processes of one worker each with `extra` arguments, once that file is
/// trained (and nothing more arrives): the two children and the model path.
fn idle_two_process_stream(
    dir: &Path,
    extra: &[&str],
) -> (Vec<std::process::Child>, std::path::PathBuf) {
    let inbox = dir.join("inbox");
    std::fs::create_dir(&inbox).unwrap();
    nyc_part(&inbox.join("part-000.parquet"), 0, 4000);
    let model = dir.join("model.json");
    let hosts = hostfile(dir, 2);
    let children: Vec<_> = (0..2)
        .map(|i| {
            let mut args: Vec<String> = vec![
                "stream".into(),
                PIPELINE.into(),
                "--input".into(),
                inbox.display().to_string(),
                "--watch".into(),
                "--model-out".into(),
                model.display().to_string(),
                "--set".into(),
                "stream.batch_rows=4000".into(),
                "--set".into(),
                "stream.snapshot_every=1".into(),
                "-n".into(),
                "2".into(),
                "-p".into(),
                i.to_string(),
                "--hostfile".into(),
                hosts.display().to_string(),
            ];
            args.extend(extra.iter().map(|a| a.to_string()));
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            start(&argv, &[])
        })
        .collect();
    wait_until("the file trained", || snapshot_rows(&model) == Some(4000));
    (children, model)
}

#[test]
fn sigterm_to_any_process_of_an_idle_stream_stops_them_all() {
    let dir = tempfile::tempdir().unwrap();
    let (children, _) = idle_two_process_stream(dir.path(), &[]);
    // Nothing more arrives; process 1 (not the one reading) is asked to stop.
    kill(Pid::from_raw(children[1].id() as i32), Signal::SIGTERM).unwrap();
    for (i, c) in children.into_iter().enumerate() {
        let out = finish(c, Duration::from_secs(30));
        assert!(
            out.status.success(),
            "process {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn refusals_an_empty_stream_and_an_offset_without_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.json");
    let empty = dir.path().join("empty.parquet");
    nyc_part(&empty, 0, 0);
    let out = stream(&empty.display().to_string(), &model, &[], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("no rows"), "{stderr}");
    assert!(!model.exists(), "an empty stream wrote a model");

    let ipc = common::ipc_stream("nycflights13.parquet", 1);
    let args: Vec<String> = vec![
        "--set".into(),
        format!("output.checkpoint=\"{}\"", dir.path().join("ck").display()),
        "--resume".into(),
        "--input-offset".into(),
        "1000".into(),
    ];
    let out = stream("-", &model, &args, Some(&ipc));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--input-offset"), "{stderr}");
}

/// A stream of `data` on two processes of one worker each, with `extra`
/// settings: process 0's model file.
fn on_two_processes(dir: &Path, name: &str, data: &str, extra: &[&str]) -> std::path::PathBuf {
    let hosts = hostfile(dir, 2);
    let model = |i: usize| dir.join(format!("{name}-p{i}.json"));
    let children: Vec<_> = (0..2)
        .map(|i| {
            let mut args: Vec<String> = vec![
                "stream".into(),
                PIPELINE.into(),
                "--input".into(),
                data.into(),
                "--model-out".into(),
                model(i).display().to_string(),
                "-n".into(),
                "2".into(),
                "-p".into(),
                i.to_string(),
                "--hostfile".into(),
                hosts.display().to_string(),
            ];
            args.extend(settings(extra));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            start(&args, &[])
        })
        .collect();
    for (i, c) in children.into_iter().enumerate() {
        let out = finish(c, Duration::from_secs(120));
        assert!(
            out.status.success(),
            "{name}, process {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    model(0)
}

#[test]
fn param_server_and_model_average_streams_are_deterministic_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let data = "datasets/nycflights13.parquet";
    let model = |name: &str| dir.path().join(format!("{name}.json"));
    // FTRL with L1 and L2: lazy updates whose untouched weights move.
    let base = [
        "optimizer.kind=\"ftrl\"",
        "model.l1=0.00001",
        "model.l2=0.001",
        "stream.batch_rows=5000",
    ];
    let run = |name: &str, workers: &str, extra: &[&str]| {
        let all: Vec<&str> = base.iter().chain(extra).copied().collect();
        let args = [settings(&all), vec!["-w".into(), workers.into()]].concat();
        ok(&stream(data, &model(name), &args, None), name)
    };
    let allreduce = run("allreduce", "1", &[]);

    // param-server: staleness 0 is allreduce; staleness 2 computes each
    // step against the model two steps behind, the same on any count.
    let ps = ["train.strategy=\"param-server\""];
    run("ps0", "2", &ps);
    assert!(weights(&model("ps0")) == weights(&model("allreduce")));
    let stale = ["train.strategy=\"param-server\"", "train.staleness=2"];
    let ps2 = run("ps2-w1", "1", &stale);
    assert!(weights(&model("ps2-w1")) != weights(&model("allreduce")));
    assert!(
        ps2["progressive"]["loss"].as_f64() != allreduce["progressive"]["loss"].as_f64(),
        "stale gradients left the progressive loss as it was"
    );
    run("ps2-w3", "3", &stale);
    assert!(weights(&model("ps2-w3")) == weights(&model("ps2-w1")));
    let p = on_two_processes(dir.path(), "ps2", data, &[&base[..], &stale[..]].concat());
    assert!(weights(&p) == weights(&model("ps2-w1")), "2 processes");

    // model-average: one replica is allreduce; two are averaged at every
    // batch end and every 3 steps, the same on threads and processes.
    let ma = ["train.strategy=\"model-average\"", "train.sync_every=3"];
    run("ma-w1", "1", &ma);
    assert!(weights(&model("ma-w1")) == weights(&model("allreduce")));
    let ma2 = run("ma-w2", "2", &ma);
    assert!(weights(&model("ma-w2")) != weights(&model("allreduce")));
    let loss = ma2["progressive"]["loss"].as_f64().unwrap();
    let reference = allreduce["progressive"]["loss"].as_f64().unwrap();
    assert!(
        (loss - reference).abs() < 0.02,
        "model-average's progressive loss {loss} is far from allreduce's {reference}"
    );
    let p = on_two_processes(dir.path(), "ma", data, &[&base[..], &ma[..]].concat());
    assert!(weights(&p) == weights(&model("ma-w2")), "2 processes");

    // From stdin, with the producer pausing mid-way (the idle leader sends
    // empty steps meanwhile): still the replay's model.
    let ipc = sorted_ipc();
    let mut args = settings(&[&base[..], &ma[..]].concat());
    let i = args.iter().position(|a| a.contains("order_by")).unwrap();
    args.drain(i - 1..=i);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidemill"));
    cmd.current_dir(root())
        .env("TIDEMILL_LOG", "warn")
        .args(["stream", PIPELINE, "--input", "-", "--model-out"])
        .arg(model("ma-stdin"))
        .args(&args)
        .args(["-w", "2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut pipe = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let half = ipc.len() / 2;
        pipe.write_all(&ipc[..half]).unwrap();
        pipe.flush().unwrap();
        std::thread::sleep(Duration::from_millis(1300));
        pipe.write_all(&ipc[half..]).unwrap();
    });
    let out = finish(child, Duration::from_secs(120));
    writer.join().unwrap();
    ok(&out, "model-average from a pausing stdin");
    assert!(
        weights(&model("ma-stdin")) == weights(&model("ma-w2")),
        "model-average: a pause in the producer changed the model"
    );

    // Killed mid-way and resumed on the same count: the same model.
    for (name, extra) in [("ps2-w2", &stale[..]), ("ma-w2", &ma[..])] {
        ok(
            &stream(
                data,
                &model(&format!("{name}-ref")),
                &[
                    settings(&[&base[..], extra].concat()),
                    vec!["-w".into(), "2".into()],
                ]
                .concat(),
                None,
            ),
            name,
        );
        let ck = dir.path().join(format!("{name}-ck"));
        let ck_set = format!("output.checkpoint=\"{}\"", ck.display());
        let all: Vec<&str> = base
            .iter()
            .chain(extra)
            .copied()
            .chain([ck_set.as_str()])
            .collect();
        let out_model = model(&format!("{name}-resumed"));
        killed_after_three_checkpoints(
            &out_model,
            &ck,
            &[settings(&all), vec!["-w".into(), "2".into()]].concat(),
        );
        ok(
            &stream(
                data,
                &out_model,
                &[
                    settings(&all),
                    vec!["-w".into(), "2".into(), "--resume".into()],
                ]
                .concat(),
                None,
            ),
            &format!("{name} resumed"),
        );
        assert!(
            weights(&out_model) == weights(&model(&format!("{name}-ref"))),
            "{name} killed and resumed: the model differs"
        );
    }
}

#[test]
fn a_stopped_peer_of_an_idle_stream_is_detected_within_the_peer_timeout() {
    // SIGSTOP leaves the peer's connections open: only its silence shows.
    let dir = tempfile::tempdir().unwrap();
    let (mut children, _) = idle_two_process_stream(dir.path(), &["--peer-timeout", "3"]);
    let victim = children.pop().unwrap();
    kill(Pid::from_raw(victim.id() as i32), Signal::SIGSTOP).unwrap();
    let stopped_at = std::time::Instant::now();
    let survivor = children.pop().unwrap();
    let out = finish(survivor, Duration::from_secs(60));
    let detected = stopped_at.elapsed();
    let _ = kill(Pid::from_raw(victim.id() as i32), Signal::SIGKILL);
    let _ = finish(victim, Duration::from_secs(10));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{stderr}");
    assert!(
        stderr.contains("process 1 at") && stderr.contains("stopped answering"),
        "{stderr}"
    );
    assert!(
        detected > Duration::from_secs(2) && detected < Duration::from_secs(3 + 10),
        "detected {detected:?} after the stop, with --peer-timeout 3"
    );
}

/// `model-parallel` streams: [`settings`] with the strategy set.
fn split_settings(extra: &[&str]) -> Vec<String> {
    settings(&[&["train.strategy=\"model-parallel\""], extra].concat())
}

#[test]
fn model_parallel_streams_give_one_model_on_any_worker_count() {
    let dir = tempfile::tempdir().unwrap();
    let model = |name: &str| dir.path().join(format!("{name}.json"));
    let data = "datasets/nycflights13.parquet";
    let predictions = dir.path().join("predictions.parquet");
    let mut args = split_settings(&[]);
    args.extend([
        "--predictions-out".into(),
        predictions.display().to_string(),
        "--keep".into(),
        "late15".into(),
        "-w".into(),
        "2".into(),
    ]);
    let summary = ok(&stream(data, &model("w2"), &args, None), "2 workers");
    let progressive = &summary["progressive"];
    assert_eq!(progressive["rows"], 327346);
    let loss = progressive["loss"].as_f64().unwrap();

    // Progressive validation from the summed margins, before each step:
    // the predictions give the reported log loss.
    check_progressive(&predictions, loss);

    for w in ["1", "4"] {
        let out = stream(
            data,
            &model(w),
            &[split_settings(&[]), vec!["-w".into(), w.into()]].concat(),
            None,
        );
        let s = ok(&out, &format!("{w} workers"));
        assert_eq!(s["progressive"], *progressive, "{w} workers");
        assert!(
            weights(&model(w)) == weights(&model("w2")),
            "{w} workers: the model differs from 2 workers'"
        );
    }

    // The blocks are put together only for a snapshot: with none before
    // the end, once, after the last batch (an empty step of its own).
    let only_final = [
        "stream.snapshot_every=1000000",
        "stream.snapshot_seconds=1000000",
    ];
    let out = stream(
        data,
        &model("final-only"),
        &[split_settings(&only_final), vec!["-w".into(), "2".into()]].concat(),
        None,
    );
    assert_eq!(ok(&out, "final snapshot only")["snapshots"], 1);
    let unnumbered = |name: &str| {
        let mut w = weights(&model(name));
        w["stream"].as_object_mut().unwrap().remove("snapshot");
        w
    };
    assert!(
        unnumbered("final-only") == unnumbered("w2"),
        "gathered only at the end: the model differs"
    );

    // Two processes, one worker each.
    let p0 = on_two_processes(
        dir.path(),
        "mp",
        data,
        &["train.strategy=\"model-parallel\""],
    );
    assert!(
        weights(&p0) == weights(&model("w2")),
        "2 processes: the model differs"
    );

    // Allreduce sums each margin in f64 in column order, model-parallel
    // exactly: the same stream to the last bits of the weights.
    let reference = ok(
        &stream(data, &model("allreduce"), &settings(&[]), None),
        "allreduce",
    );
    let ar = reference["progressive"]["loss"].as_f64().unwrap();
    assert!(
        (ar - loss).abs() < 1e-12,
        "allreduce {ar}, model-parallel {loss}"
    );
    let (a, b) = (weights(&model("allreduce")), weights(&model("w2")));
    assert_eq!(a["features"], b["features"]);
    let close = |x: &serde_json::Value, y: &serde_json::Value| {
        let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
        (x - y).abs() <= 1e-12 * x.abs().max(1e-3)
    };
    assert!(close(&a["intercept"], &b["intercept"]));
    let hashed = a["hashed"].as_object().unwrap();
    assert_eq!(hashed.len(), b["hashed"].as_object().unwrap().len());
    for (k, v) in hashed {
        assert!(
            close(v, &b["hashed"][k]),
            "hashed weight {k}: {v} and {}",
            b["hashed"][k]
        );
    }
}

#[test]
fn a_model_parallel_stream_killed_mid_way_resumes_on_another_worker_count() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    let reference = dir.path().join("reference.json");
    let model = dir.path().join("model.json");
    let args = |ck: &Path, workers: &str| {
        let mut a = split_settings(&[
            "stream.batch_rows=5000",
            &format!("output.checkpoint=\"{}\"", ck.display()),
            "optimizer.kind=\"ftrl\"",
            "model.l1=0.00001",
        ]);
        a.extend(["-w".into(), workers.into()]);
        a
    };
    ok(
        &stream(
            "datasets/nycflights13.parquet",
            &reference,
            &args(&dir.path().join("ck0"), "2"),
            None,
        ),
        "uninterrupted",
    );

    // Killed on 2 workers after a few checkpoints, resumed on 4 and
    // killed again after one more, then resumed on 1.
    let newest = |ck: &Path| {
        std::fs::read_dir(ck).ok().and_then(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".tmck"))
                .max()
        })
    };
    let killed = |workers: &str, resume: bool, until: &dyn Fn() -> bool| {
        let mut a: Vec<String> = vec![
            "stream".into(),
            PIPELINE.into(),
            "--input".into(),
            "datasets/nycflights13.parquet".into(),
            "--model-out".into(),
            model.display().to_string(),
            "--rate".into(),
            "100000".into(),
        ];
        a.extend(args(&ck, workers));
        if resume {
            a.push("--resume".into());
        }
        let argv: Vec<&str> = a.iter().map(String::as_str).collect();
        let child = start(&argv, &[]);
        wait_until("checkpoints", until);
        kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
        let out = finish(child, Duration::from_secs(30));
        assert_eq!(out.status.code(), None, "it ended before the kill");
    };
    killed("2", false, &|| checkpoints(&ck) >= 3);
    let first = newest(&ck);
    killed("4", true, &|| newest(&ck) > first);
    let resumed = ok(
        &stream(
            "datasets/nycflights13.parquet",
            &model,
            &[args(&ck, "1"), vec!["--resume".into()]].concat(),
            None,
        ),
        "resumed on 1 worker",
    );
    assert!(resumed["rows_this_run"].as_u64().unwrap() < 327346);
    assert!(
        weights(&model) == weights(&reference),
        "killed and resumed on 4 workers, then 1: the model differs"
    );
}

#[test]
fn a_model_parallel_stream_refuses_what_the_batch_strategy_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.json");
    let out = stream(
        "datasets/nycflights13.parquet",
        &model,
        &split_settings(&["optimizer.kind=\"lbfgs\""]),
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("optimizer.kind"), "{stderr}");
    assert!(!model.exists());
}

/// `tidemill stream` of nycflights13's pipeline reading Arrow IPC from a
/// pipe, 3000-row batches each snapshotted to `model`, with `args`.
fn live_stream(model: &Path, args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_tidemill"))
        .current_dir(root())
        .env("TIDEMILL_LOG", "warn")
        .args(["stream", PIPELINE, "--input", "-", "--model-out"])
        .arg(model)
        .args([
            "--set",
            "stream.snapshot_every=1",
            "--set",
            "stream.batch_rows=3000",
        ])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Writes the first `rows` rows of nycflights13 to a stream child's stdin
/// as Arrow IPC and leaves the stream open (a live producer): drop the
/// writer to close it.
fn feed_open(
    child: &mut std::process::Child,
    rows: usize,
) -> arrow::ipc::writer::StreamWriter<std::process::ChildStdin> {
    let f = std::fs::File::open(root().join("datasets/nycflights13.parquet")).unwrap();
    let first = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap()
        .with_batch_size(rows)
        .build()
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let pipe = child.stdin.take().unwrap();
    let mut w = arrow::ipc::writer::StreamWriter::try_new(pipe, &first.schema()).unwrap();
    w.write(&first).unwrap();
    w.flush().unwrap();
    w
}

/// Waits until the model snapshot at `model` has trained `rows` rows.
fn wait_for_snapshot(model: &Path, rows: u64) {
    wait_until(&format!("a snapshot of {rows} rows"), || {
        std::fs::read(model)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|v| v["stream"]["rows"] == rows)
    });
}

/// A stream on one worker thread turns transparent huge pages off for its
/// process (a wide hashed model's state then costs pages only where its
/// slots are touched); on two worker threads it keeps them.
#[test]
fn a_one_worker_stream_turns_huge_pages_off() {
    // Huge pages must be on to begin with (a kernel without them, or a
    // runner that turned them off for its children, has nothing to show).
    if thp_enabled(std::process::id()).as_deref() != Some("1") {
        eprintln!("skipped: transparent huge pages are not on for this process");
        return;
    }
    for (workers, want) in [("1", "0"), ("2", "1")] {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model.json");
        let mut child = live_stream(&model, &["-w", workers]);
        let w = feed_open(&mut child, 3000);
        // Trained a batch: well past start-up.
        wait_for_snapshot(&model, 3000);
        let thp = thp_enabled(child.id());
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
        let out = finish(child, Duration::from_secs(60));
        drop(w);
        ok(&out, "stopped stream");
        assert_eq!(thp.as_deref(), Some(want), "{workers} worker(s)");
    }
}
