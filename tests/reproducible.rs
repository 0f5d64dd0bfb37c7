//! The same pipeline and seed give a byte-identical model file on 1, 2 and 4
//! worker threads and on 2 processes over loopback TCP, for slice and
//! shuffle, for SGD and L-BFGS, and with lazy updates for every first-order
//! method.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{root, tidemill_ok};

fn train_threads(pipeline: &str, sets: &[&str], workers: usize, out: &Path) -> Vec<u8> {
    let w = workers.to_string();
    let model = out.to_string_lossy().to_string();
    let mut args = vec!["train", pipeline, "--workers", &w, "--model-out", &model];
    for s in sets {
        args.push("--set");
        args.push(s);
    }
    tidemill_ok(&args);
    std::fs::read(out).unwrap()
}

/// Two real processes, one worker thread each, talking over loopback.
fn train_processes(pipeline: &str, sets: &[&str], dir: &Path) -> Vec<u8> {
    let hostfile = common::hostfile(dir, 2);
    let model = dir.join("multi.json");
    let spawn = |process: usize| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidemill"));
        cmd.current_dir(root())
            .env("TIDEMILL_LOG", "warn")
            .args([
                "train",
                pipeline,
                "--processes",
                "2",
                "--process",
                &process.to_string(),
            ])
            .arg("--hostfile")
            .arg(&hostfile)
            .arg("--model-out")
            .arg(&model)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for s in sets {
            cmd.args(["--set", s]);
        }
        cmd.spawn().unwrap()
    };
    let p0 = spawn(0);
    let p1 = spawn(1);
    for p in [p0, p1] {
        let out = p.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "process failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::read(&model).unwrap()
}

fn check(pipeline: &str, sets: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let reference = train_threads(pipeline, sets, 1, &dir.path().join("w1.json"));
    for w in [2, 4] {
        let other = train_threads(pipeline, sets, w, &dir.path().join(format!("w{w}.json")));
        assert!(
            reference == other,
            "{pipeline} {sets:?}: {w} workers differ from 1"
        );
    }
    let multi = train_processes(pipeline, sets, dir.path());
    assert!(
        reference == multi,
        "{pipeline} {sets:?}: 2 processes differ from 1 worker"
    );
}

#[test]
fn lbfgs_slice() {
    check("pipelines/quickstart.toml", &["data.partition=slice"]);
}

#[test]
fn lbfgs_shuffle() {
    check(
        "pipelines/quickstart.toml",
        &["data.partition=shuffle", "data.max_unit_rows=50"],
    );
}

/// Vector-free L-BFGS: the owners' scalars are summed in shard order, the
/// same on 1, 2 and 4 threads and on 2 processes; with L1 (OWL-QN) too.
#[test]
fn sharded_lbfgs() {
    check(
        "pipelines/digits.toml",
        &["optimizer.sharded=true", "data.partition=shuffle"],
    );
    check(
        "pipelines/quickstart.toml",
        &["optimizer.sharded=true", "model.l1=0.01", "train.shards=7"],
    );
}

#[test]
fn sgd_slice() {
    check(
        "pipelines/breast_cancer.toml",
        &[
            "data.partition=slice",
            "optimizer.kind=sgd",
            "optimizer.learning_rate=0.1",
        ],
    );
}

#[test]
fn sgd_shuffle_hashed_categoricals() {
    check(
        "pipelines/adult.toml",
        &[
            "data.partition=shuffle",
            "optimizer.kind=sgd",
            "train.epochs=2",
        ],
    );
}

#[test]
fn softmax_adam_shuffle() {
    check(
        "pipelines/digits.toml",
        &[
            "optimizer.kind=adam",
            "optimizer.learning_rate=0.01",
            "train.epochs=3",
        ],
    );
}

/// Lazy updates on hashed categoricals (adult: 2^12 slots, `l2 = 1e-4`):
/// SGD with elastic net and FTRL with both penalties (lazy by default;
/// readers compute the weights that moved while untouched), and momentum,
/// AdaGrad and Adam asked for lazily; one of them also streamed.
#[test]
fn lazy_updates_hashed_categoricals() {
    for sets in [
        &["optimizer.kind=sgd", "model.l1=0.0005"][..],
        &["optimizer.kind=ftrl", "model.l1=0.001"],
        &[
            "optimizer.kind=sgd",
            "model.l1=0.0005",
            "data.cache=false",
            "data.partition=slice",
        ],
        &[
            "optimizer.kind=momentum",
            "optimizer.learning_rate=0.01",
            "optimizer.lazy=true",
        ],
        &["optimizer.kind=adagrad", "optimizer.lazy=true"],
        &[
            "optimizer.kind=adam",
            "optimizer.learning_rate=0.01",
            "optimizer.lazy=true",
        ],
    ] {
        let mut sets = sets.to_vec();
        sets.push("train.epochs=2");
        check("pipelines/adult.toml", &sets);
    }
}

/// `train.fold`: the shards' owners, or every worker, sum the gradients
/// and step the optimizer: the same model bytes either way, on 1, 2 and 4
/// threads and on 2 processes, with dense steps and with lazy updates on
/// hashed categoricals.
#[test]
fn the_owners_or_every_worker_fold_the_same_model() {
    for fold in ["train.fold=owners", "train.fold=every-worker"] {
        check(
            "pipelines/breast_cancer.toml",
            &[
                "optimizer.kind=adam",
                "optimizer.learning_rate=0.01",
                "train.shards=5",
                fold,
            ],
        );
        check(
            "pipelines/adult.toml",
            &[
                "optimizer.kind=ftrl",
                "model.l1=0.001",
                "train.epochs=2",
                fold,
            ],
        );
    }
}

#[test]
fn different_seeds_give_different_models() {
    let dir = tempfile::tempdir().unwrap();
    let sets = ["optimizer.kind=sgd"];
    let a = train_threads(
        "pipelines/breast_cancer.toml",
        &sets,
        2,
        &dir.path().join("a.json"),
    );
    let b = train_threads(
        "pipelines/breast_cancer.toml",
        &["optimizer.kind=sgd", "data.seed=8"],
        2,
        &dir.path().join("b.json"),
    );
    assert_ne!(a, b, "the seed must matter under shuffle");
}

#[test]
fn streaming_epochs_lbfgs() {
    check(
        "pipelines/california_housing.toml",
        &["data.cache=false", "data.max_unit_rows=3000"],
    );
}

#[test]
fn streaming_epochs_sgd_shuffle() {
    check(
        "pipelines/adult.toml",
        &["data.cache=false", "train.epochs=2"],
    );
}

/// Writes `rows` rows of mixed columns to `path`: `a` float32 (null every
/// 13th row), `b` float64 (not exact in f32; left out unless `with_f64`),
/// `n` int32, `cat` strings and a 0/1 label `y` that depends on them;
/// 20,000-row row groups (three windows of the reader each).
fn write_mixed(path: &Path, rows: usize, salt: u64, with_f64: bool) {
    use arrow::array::{ArrayRef, Float32Array, Float64Array, Int32Array, Int64Array, StringArray};
    use std::sync::Arc;
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ salt;
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let (mut a, mut b, mut n, mut cat, mut y) = (vec![], vec![], vec![], vec![], vec![]);
    for i in 0..rows {
        let (u, v, w) = (next(), next(), next());
        a.push((i % 13 != 0).then_some((u * 10.0 - 3.0) as f32));
        b.push(v * 1e3 + 0.1);
        n.push((w * 50.0) as i32);
        cat.push(format!("c{}", i % 7));
        let m = u * 2.0 - v + (i % 7) as f64 * 0.1 - 0.6;
        y.push(i64::from(next() < 1.0 / (1.0 + (-m).exp())));
    }
    let mut columns = vec![
        ("a", Arc::new(Float32Array::from(a)) as ArrayRef),
        ("n", Arc::new(Int32Array::from(n))),
        ("cat", Arc::new(StringArray::from(cat))),
        ("y", Arc::new(Int64Array::from(y))),
    ];
    if with_f64 {
        columns.push(("b", Arc::new(Float64Array::from(b))));
    }
    common::write_parquet(path, columns, 20_000);
}

/// The sum of `key=N` over log lines.
fn log_sum(lines: &[&str], key: &str) -> usize {
    lines
        .iter()
        .filter_map(|l| {
            l.split(key)
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<usize>()
                .ok()
        })
        .sum()
}

/// The statistics scan keeps the units it decodes, and the first cached
/// epoch standardises them in place instead of reading them again: the
/// model is byte for byte the one streamed epochs train (they read every
/// unit every epoch), for float32, float64 and integer columns (the kept
/// `f64`s, and the `f32`s where they are exact), missing values filled
/// with the mean or their rows skipped, units of several windows, rows
/// held out by fraction or a separate validation file, slice and shuffle,
/// a logistic, a linear and a softmax model (declared classes), on 1 and
/// 3 workers; and the log shows that the first epoch's units, and the
/// validation file's, came from the scan.
#[test]
fn units_the_scan_decoded_train_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    write_mixed(&path("train.parquet"), 60_000, 1, true);
    write_mixed(&path("test.parquet"), 25_000, 2, true);
    write_mixed(&path("exact.parquet"), 60_000, 3, false);
    let (train, test, exact) = (
        path("train.parquet"),
        path("test.parquet"),
        path("exact.parquet"),
    );
    let common = "label = \"y\"\ncategorical = [\"cat\"]\nhash_bits = 6\nstandardize = true\n";
    let jobs = [
        format!(
            "[data]\ntrain = {train:?}\nvalidation = {{ fraction = 0.2 }}\npartition = \"shuffle\"\non_missing = \"mean\"\n{common}\
             [model]\nkind = \"logistic\"\nl2 = 0.001\n[optimizer]\nkind = \"sgd\"\nbatch_size = 500\n[train]\nepochs = 2\n"
        ),
        format!(
            "[data]\ntrain = {train:?}\nvalidation = {{ path = {test:?} }}\npartition = \"slice\"\non_missing = \"mean\"\n{common}\
             [model]\nkind = \"linear\"\nl2 = 0.01\n[optimizer]\nkind = \"lbfgs\"\n[train]\nepochs = 5\n"
        ),
        format!(
            "[data]\ntrain = {exact:?}\nvalidation = {{ fraction = 0.2 }}\npartition = \"slice\"\non_missing = \"skip_row\"\nclasses = [\"0\", \"1\"]\n{common}\
             [model]\nkind = \"softmax\"\nl2 = 0.001\n[optimizer]\nkind = \"adagrad\"\nbatch_size = 700\n[train]\nepochs = 2\n"
        ),
    ];
    for (j, job) in jobs.iter().enumerate() {
        let pipeline = dir.path().join(format!("job{j}.toml"));
        std::fs::write(&pipeline, job).unwrap();
        let pipeline = pipeline.to_string_lossy().to_string();
        for workers in ["1", "3"] {
            let (cached, streamed) = (dir.path().join("c.json"), dir.path().join("s.json"));
            let (c, s) = (cached.to_string_lossy(), streamed.to_string_lossy());
            let run = common::tidemill(&[
                "train",
                &pipeline,
                "-w",
                workers,
                "--model-out",
                &c,
                "--log",
                "tidemill::data::cache=debug",
            ]);
            common::assert_success(&run, "the cached run");
            let log = String::from_utf8_lossy(&run.stderr);
            let first: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("DEBUG units cached") && l.contains("epoch=0"))
                .collect();
            assert_eq!(first.len(), workers.parse::<usize>().unwrap(), "{log}");
            let (from_scan, read) = (log_sum(&first, "from_scan="), log_sum(&first, " read="));
            // Rows held out by fraction could move the first epoch's unit
            // boundaries from the scan's (which owns units by their rows
            // before the split): a unit there would be read again.
            let most = if j == 1 {
                read == 0
            } else {
                from_scan >= 2 * read
            };
            assert!(from_scan > 0 && most, "job {j}, {workers} workers: {log}");
            if j == 1 {
                let files: Vec<&str> = log
                    .lines()
                    .filter(|l| l.contains("validation units cached"))
                    .collect();
                assert_eq!(log_sum(&files, " read="), 0, "{log}");
                assert!(log_sum(&files, "from_scan=") > 0, "{log}");
            }
            tidemill_ok(&[
                "train",
                &pipeline,
                "-w",
                workers,
                "--model-out",
                &s,
                "--set",
                "data.cache=false",
            ]);
            assert!(
                std::fs::read(&cached).unwrap() == std::fs::read(&streamed).unwrap(),
                "job {j}, {workers} workers: the units from the scan changed the model"
            );
        }
    }
}

/// `cache` changes memory and speed, never the model: cached and streamed
/// epochs feed the same rows in the same segments, for SGD under shuffle
/// with several waves and windows too.
#[test]
fn caching_does_not_change_the_model() {
    let dir = tempfile::tempdir().unwrap();
    for (pipeline, sets) in [
        (
            "pipelines/adult.toml",
            vec![
                "train.epochs=2",
                "data.units_per_step=2",
                "data.max_unit_rows=10000",
            ],
        ),
        (
            "pipelines/california_housing.toml",
            vec!["data.partition=shuffle"],
        ),
        // 16,384-row row groups: two stream windows per unit.
        (
            "pipelines/nycflights.toml",
            vec![
                "train.epochs=1",
                "data.hash_bits=10",
                "data.units_per_step=3",
            ],
        ),
    ] {
        let mut streamed = sets.clone();
        streamed.push("data.cache=false");
        let a = train_threads(pipeline, &sets, 2, &dir.path().join("a.json"));
        let b = train_threads(pipeline, &streamed, 2, &dir.path().join("b.json"));
        assert!(a == b, "{pipeline}: cache = false changed the model");
    }
}
