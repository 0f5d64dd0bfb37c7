//! Lazy updates on the workload of the issue that asked for them: one
//! high-cardinality categorical (100,000 or 1,000,000 distinct values)
//! hashed into 2^20 slots, batch 64, one epoch; and a dense workload (32
//! numeric features, no categorical) to check that nothing regressed. Times
//! the binary before the change against this one (eager and lazy) in the
//! same run, and compares the validation loss of eager and lazy updates per
//! optimizer.
//!
//! ```sh
//! bash benches/lazy.sh                                      # all of it: builds main, gen, time
//! cargo bench --bench lazy -- gen /tmp/lazy                 # the data, once
//! cargo bench --bench lazy -- time /tmp/lazy OLD_BINARY     # before/after table
//! cargo bench --bench lazy -- quality /tmp/lazy             # eager vs lazy loss
//! ```
//!
//! `OLD_BINARY` is `tidemill` built from `main` (without lazy updates).
//! Environment: `WORKLOADS` (a comma-separated subset of `dense`, `hc100k`,
//! `hc1m`; default all), `WORKERS` (default 2), `REPS` (repetitions of the 100k and
//! dense runs, interleaved; the median is reported; default 3), `LIMIT`
//! (seconds after which a run is stopped and reported as `> LIMIT`; the
//! old binary's 1M-value runs take minutes). The data: `item` takes each
//! of its N values once, then values drawn with density ∝ 1/√rank (a heavy
//! head and a long tail); `site` 100 values; `x1`, `x2` standard normal;
//! the label is Bernoulli with logit `−0.5 + 0.8·x1 − 0.5·x2 + w_item +
//! w_site`, `w_item ~ N(0, 1)`, `w_site ~ N(0, 0.25)`; 300,000 rows (100k)
//! and 1,250,000 rows (1M). Dense: 400,000 rows, 32 standard-normal
//! features, a logistic label. Rows are shuffled; row groups of 16,384
//! rows. Results (JSON lines and a Markdown table) go to
//! `benches/results/`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, Float64Array, Int64Array};
use arrow::datatypes::{Field, Schema};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u: f64 = rng.random_range(f64::EPSILON..1.0);
    let v: f64 = rng.random();
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

/// Writes `rows` rows with `distinct` item values to `path`.
fn generate(path: &Path, distinct: usize, rows: usize, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let w_item: Vec<f64> = (0..distinct).map(|_| normal(&mut rng)).collect();
    let w_site: Vec<f64> = (0..100).map(|_| 0.5 * normal(&mut rng)).collect();
    let mut item: Vec<i64> = (0..distinct as i64).collect();
    item.extend((distinct..rows).map(|_| {
        let u: f64 = rng.random();
        ((u * u * distinct as f64) as i64).min(distinct as i64 - 1)
    }));
    item.shuffle(&mut rng);
    let (mut site, mut x1, mut x2, mut label) = (vec![], vec![], vec![], vec![]);
    for &it in &item {
        let s = rng.random_range(0..100i64);
        let (a, b) = (normal(&mut rng), normal(&mut rng));
        let logit = -0.5 + 0.8 * a - 0.5 * b + w_item[it as usize] + w_site[s as usize];
        let p = 1.0 / (1.0 + (-logit).exp());
        site.push(s);
        x1.push(a);
        x2.push(b);
        label.push(i64::from(rng.random_bool(p)));
    }
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("item", Arc::new(Int64Array::from(item))),
        ("site", Arc::new(Int64Array::from(site))),
        ("x1", Arc::new(Float64Array::from(x1))),
        ("x2", Arc::new(Float64Array::from(x2))),
        ("label", Arc::new(Int64Array::from(label))),
    ];
    write(path, columns);
}

/// Writes `rows` rows of 32 standard-normal features and a logistic label
/// (no categorical column): the dense check that nothing regressed.
fn generate_dense(path: &Path, rows: usize, seed: u64) {
    const P: usize = 32;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let w: Vec<f64> = (0..P).map(|_| 0.3 * normal(&mut rng)).collect();
    let mut cols: Vec<Vec<f64>> = (0..P).map(|_| Vec::with_capacity(rows)).collect();
    let mut label = Vec::with_capacity(rows);
    for _ in 0..rows {
        let mut logit = -0.3;
        for (j, c) in cols.iter_mut().enumerate() {
            let x = normal(&mut rng);
            logit += w[j] * x;
            c.push(x);
        }
        label.push(i64::from(rng.random_bool(1.0 / (1.0 + (-logit).exp()))));
    }
    let names: Vec<String> = (0..P).map(|j| format!("x{j}")).collect();
    let mut columns: Vec<(&str, ArrayRef)> = names
        .iter()
        .zip(cols)
        .map(|(n, c)| (n.as_str(), Arc::new(Float64Array::from(c)) as ArrayRef))
        .collect();
    columns.push(("label", Arc::new(Int64Array::from(label))));
    write(path, columns);
}

/// Writes `columns` as Parquet, row groups of 16,384 rows.
fn write(path: &Path, columns: Vec<(&str, ArrayRef)>) {
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|(n, a)| Field::new(*n, a.data_type().clone(), false))
            .collect::<Vec<_>>(),
    ));
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        columns.into_iter().map(|(_, a)| a).collect(),
    )
    .expect("columns of one length");
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(16_384))
        .build();
    let file = std::fs::File::create(path).expect("data file can be created");
    let mut w = ArrowWriter::try_new(file, schema, Some(props)).expect("parquet writer");
    w.write(&batch).expect("rows written");
    w.close().expect("file closed");
}

/// The pipeline of workload `data` (its file in `dir`), written to
/// `scratch`; the optimizer comes from `--set`.
fn pipeline(dir: &Path, data: &str, scratch: &Path) -> PathBuf {
    let path = scratch.join(format!("{data}.toml"));
    let features = if data == "dense" {
        let x: Vec<String> = (0..32).map(|j| format!("\"x{j}\"")).collect();
        format!("features = [{}]\n", x.join(", "))
    } else {
        "features = [\"item\", \"site\", \"x1\", \"x2\"]\ncategorical = [\"item\", \"site\"]\nhash_bits = 20\n"
            .to_string()
    };
    let text = format!(
        "[data]\ntrain = {:?}\nvalidation = {{ fraction = 0.2 }}\nlabel = \"label\"\n\
         {features}standardize = true\npartition = \"shuffle\"\nseed = 3\n\
         [model]\nkind = \"logistic\"\n\
         [optimizer]\nkind = \"sgd\"\nbatch_size = 64\n\
         [train]\nepochs = 1\n",
        dir.join(format!("{data}.parquet")).to_string_lossy()
    );
    std::fs::write(&path, text).expect("pipeline written");
    path
}

/// One training run: wall seconds and the last metrics record.
fn train(bin: &Path, pipeline: &Path, workers: usize, sets: &[String], out: &Path) -> Value {
    let metrics = out.join("metrics.jsonl");
    let _ = std::fs::remove_file(&metrics);
    let mut cmd = Command::new(bin);
    cmd.arg("train")
        .arg(pipeline)
        .args(["-w", &workers.to_string(), "--log", "warn"])
        .arg("--model-out")
        .arg(out.join("model.json"))
        .arg("--metrics-out")
        .arg(&metrics);
    for s in sets {
        cmd.args(["--set", s]);
    }
    cmd.stdout(std::process::Stdio::null());
    let started = Instant::now();
    let mut child = cmd.spawn().expect("tidemill runs");
    // A run past LIMIT seconds is stopped and reported as "> LIMIT".
    let limit = std::env::var("LIMIT")
        .ok()
        .and_then(|l| l.parse::<f64>().ok())
        .unwrap_or(f64::INFINITY);
    let status = loop {
        if let Some(status) = child.try_wait().expect("tidemill waited for") {
            break status;
        }
        if started.elapsed().as_secs_f64() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return json!({"wall_s": limit, "timed_out": true});
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let wall = started.elapsed().as_secs_f64();
    assert!(status.success(), "{bin:?} {sets:?} failed");
    let text = std::fs::read_to_string(&metrics).expect("metrics written");
    let last: Value = text
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .expect("a metrics record");
    json!({
        "wall_s": wall,
        "epoch_s": last["elapsed_s"],
        "bytes_per_step": last["bytes_per_step"],
        "val_loss": last["validation"]["loss"],
    })
}

/// The optimizer settings compared.
fn optimizer(name: &str) -> Vec<String> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    match name {
        "sgd l2=0" => s(&[
            "optimizer.kind=sgd",
            "optimizer.learning_rate=0.2",
            "model.l2=0",
        ]),
        "sgd l2=0.001" => s(&[
            "optimizer.kind=sgd",
            "optimizer.learning_rate=0.2",
            "model.l2=0.001",
        ]),
        "sgd elastic" => s(&[
            "optimizer.kind=sgd",
            "optimizer.learning_rate=0.2",
            "model.l2=0.001",
            "model.l1=0.0001",
        ]),
        "momentum l2=0.001" => s(&[
            "optimizer.kind=momentum",
            "optimizer.learning_rate=0.02",
            "model.l2=0.001",
        ]),
        "adagrad l2=0" => s(&[
            "optimizer.kind=adagrad",
            "optimizer.learning_rate=0.1",
            "model.l2=0",
        ]),
        "adagrad l2=0.001" => s(&[
            "optimizer.kind=adagrad",
            "optimizer.learning_rate=0.1",
            "model.l2=0.001",
        ]),
        "adam l2=0" => s(&[
            "optimizer.kind=adam",
            "optimizer.learning_rate=0.01",
            "model.l2=0",
        ]),
        "adam l2=0.001" => s(&[
            "optimizer.kind=adam",
            "optimizer.learning_rate=0.01",
            "model.l2=0.001",
        ]),
        "ftrl l1=1e-5 l2=0.001" => s(&[
            "optimizer.kind=ftrl",
            "optimizer.learning_rate=0.1",
            "model.l2=0.001",
            "model.l1=0.00001",
        ]),
        other => panic!("no optimizer setting {other}"),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn results_dir(kind: &str) -> PathBuf {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("benches/results")
        .join(format!("lazy-{kind}-{stamp}"));
    std::fs::create_dir_all(&dir).expect("results directory");
    dir
}

/// Old binary, this binary eager, this binary lazy, `reps` times each
/// (interleaved), on `workers` worker threads.
fn time(data: &Path, old: &Path, reps: usize, workers: usize) {
    let new = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/tidemill");
    let out = results_dir("time");
    let scratch = tempfile_dir();
    let mut log = String::new();
    let mut table = String::from(
        "| workload | optimizer | old s | eager s | lazy s | old / lazy | eager / lazy | old bytes/step | lazy bytes/step | old val loss | lazy val loss |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let cases: [(&str, &[&str], usize); 3] = [
        (
            "dense",
            &[
                "sgd l2=0",
                "sgd l2=0.001",
                "adam l2=0.001",
                "ftrl l1=1e-5 l2=0.001",
            ],
            reps,
        ),
        (
            "hc100k",
            &[
                "sgd l2=0",
                "sgd l2=0.001",
                "adam l2=0",
                "adam l2=0.001",
                "ftrl l1=1e-5 l2=0.001",
            ],
            reps,
        ),
        ("hc1m", &["sgd l2=0.001", "adam l2=0", "adam l2=0.001"], 1),
    ];
    // WORKLOADS: a comma-separated subset of dense, hc100k, hc1m.
    let only = std::env::var("WORKLOADS").ok();
    for (data_name, opts, reps) in cases {
        if only
            .as_ref()
            .is_some_and(|w| !w.split(',').any(|w| w == data_name))
        {
            continue;
        }
        let p = pipeline(data, data_name, &scratch);
        for name in opts {
            let sets = optimizer(name);
            let mut runs: Vec<(&str, Vec<Value>)> =
                vec![("old", vec![]), ("eager", vec![]), ("lazy", vec![])];
            for _ in 0..reps {
                for (label, rs) in runs.iter_mut() {
                    let (bin, extra) = match *label {
                        "old" => (old.to_path_buf(), vec![]),
                        "eager" => (new.clone(), vec!["optimizer.lazy=false".to_string()]),
                        _ => (new.clone(), vec!["optimizer.lazy=true".to_string()]),
                    };
                    if *label == "eager" && data_name == "hc1m" {
                        continue; // the old binary's twin; minutes per run
                    }
                    let all: Vec<String> = sets.iter().cloned().chain(extra).collect();
                    let r = train(&bin, &p, workers, &all, &scratch);
                    eprintln!("{data_name} {name} {label}: {r}");
                    log.push_str(&format!(
                        "{}\n",
                        json!({"workload": data_name, "optimizer": name, "binary": label, "workers": workers, "run": r})
                    ));
                    rs.push(r);
                }
            }
            let wall = |rs: &[Value]| {
                (!rs.is_empty()).then(|| {
                    median(
                        rs.iter()
                            .map(|r| r["wall_s"].as_f64().unwrap_or(f64::NAN))
                            .collect(),
                    )
                })
            };
            let (o, e, l) = (wall(&runs[0].1), wall(&runs[1].1), wall(&runs[2].1));
            let capped = |i: usize| runs[i].1.iter().any(|r| r["timed_out"] == true);
            let f = |x: Option<f64>, i: usize| {
                x.map_or("-".to_string(), |x| {
                    format!("{}{x:.2}", if capped(i) { "> " } else { "" })
                })
            };
            let ratio = |a: Option<f64>, b: Option<f64>, i: usize| match (a, b) {
                (Some(a), Some(b)) => {
                    format!("{}{:.2}×", if capped(i) { "> " } else { "" }, a / b)
                }
                _ => "-".into(),
            };
            let first = |k: &str, i: usize| runs[i].1.first().map_or(Value::Null, |r| r[k].clone());
            table.push_str(&format!(
                "| {data_name} | {name} | {} | {} | {} | {} | {} | {} | {} | {:.5} | {:.5} |\n",
                f(o, 0),
                f(e, 1),
                f(l, 2),
                ratio(o, l, 0),
                ratio(e, l, 1),
                first("bytes_per_step", 0)
                    .as_f64()
                    .map_or("-".into(), |b| format!("{b:.0}")),
                first("bytes_per_step", 2)
                    .as_f64()
                    .map_or("-".into(), |b| format!("{b:.0}")),
                first("val_loss", 0).as_f64().unwrap_or(f64::NAN),
                first("val_loss", 2).as_f64().unwrap_or(f64::NAN),
            ));
            std::fs::write(out.join("runs.jsonl"), &log).expect("results written");
            std::fs::write(out.join("table.md"), &table).expect("table written");
        }
    }
    println!("{table}");
    eprintln!("results: {}", out.display());
}

/// Validation loss of eager and lazy updates per optimizer, on the
/// 100k-value workload (one epoch) and nycflights at 2^18 slots (3 epochs).
fn quality(data: &Path, workers: usize) {
    let new = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/tidemill");
    let out = results_dir("quality");
    let scratch = tempfile_dir();
    let mut log = String::new();
    let mut table = String::from(
        "| workload | optimizer | eager val loss | lazy val loss | lazy − eager | eager s | lazy s |\n|---|---|---|---|---|---|---|\n",
    );
    let nyc = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("pipelines/nycflights.toml");
    let workloads: [(&str, PathBuf, Vec<String>); 2] = [
        ("hc100k", pipeline(data, "hc100k", &scratch), vec![]),
        ("nycflights 2^18, 3 epochs", nyc, vec![]),
    ];
    let names = [
        "sgd l2=0.001",
        "sgd elastic",
        "momentum l2=0.001",
        "adagrad l2=0",
        "adagrad l2=0.001",
        "adam l2=0",
        "adam l2=0.001",
        "ftrl l1=1e-5 l2=0.001",
    ];
    for (wl, p, base) in &workloads {
        for name in names {
            let mut res = Vec::new();
            for lazy in [false, true] {
                let sets: Vec<String> = optimizer(name)
                    .into_iter()
                    .chain(base.iter().cloned())
                    .chain([format!("optimizer.lazy={lazy}")])
                    .collect();
                let r = train(&new, p, workers, &sets, &scratch);
                eprintln!("{wl} {name} lazy={lazy}: {r}");
                log.push_str(&format!(
                    "{}\n",
                    json!({"workload": wl, "optimizer": name, "lazy": lazy, "workers": workers, "run": r})
                ));
                res.push(r);
            }
            let (e, l) = (
                res[0]["val_loss"].as_f64().unwrap_or(f64::NAN),
                res[1]["val_loss"].as_f64().unwrap_or(f64::NAN),
            );
            table.push_str(&format!(
                "| {wl} | {name} | {e:.5} | {l:.5} | {:+.5} | {:.2} | {:.2} |\n",
                l - e,
                res[0]["wall_s"].as_f64().unwrap_or(f64::NAN),
                res[1]["wall_s"].as_f64().unwrap_or(f64::NAN),
            ));
            std::fs::write(out.join("runs.jsonl"), &log).expect("results written");
            std::fs::write(out.join("table.md"), &table).expect("table written");
        }
    }
    println!("{table}");
    eprintln!("results: {}", out.display());
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tidemill-lazy-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let mode = args.first().map(String::as_str).unwrap_or("help");
    let data = PathBuf::from(args.get(1).cloned().unwrap_or_else(|| "/tmp/lazy".into()));
    let workers: usize = std::env::var("WORKERS")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(2);
    match mode {
        "gen" => {
            std::fs::create_dir_all(&data).expect("data directory");
            generate(&data.join("hc100k.parquet"), 100_000, 300_000, 1);
            generate(&data.join("hc1m.parquet"), 1_000_000, 1_250_000, 2);
            generate_dense(&data.join("dense.parquet"), 400_000, 3);
            eprintln!("wrote {}", data.display());
        }
        "time" => {
            let old = PathBuf::from(args.get(2).expect("the pre-change binary"));
            let reps = std::env::var("REPS")
                .ok()
                .and_then(|r| r.parse().ok())
                .unwrap_or(3);
            time(&data, &old, reps, workers);
        }
        "quality" => quality(&data, workers),
        _ => eprintln!("usage: cargo bench --bench lazy -- gen|time|quality DIR [OLD_BINARY]"),
    }
}
