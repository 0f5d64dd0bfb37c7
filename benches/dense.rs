//! The dense synthetic logistic workload (W1 of `benches/peers`): epoch time
//! on 1 and 2 workers against a bare Parquet scan-and-decode of the same
//! columns, examples/s, and peak RSS with and without the decoded cache.
//!
//! ```sh
//! python3 benches/peers/gen_dense.py /tmp/bench          # 4M × 32 float32, once
//! cargo bench --bench dense -- all /tmp/bench              # every configuration, JSON lines + a table
//! ```
//!
//! Each configuration runs in a child process so that its peak RSS
//! (`VmHWM`) is its own. Ratios are computed within one run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};
use tidemill::cluster::Cluster;
use tidemill::data::encode::{decode, LabelUse};
use tidemill::data::partition::assign;
use tidemill::plan::Plan;
use tidemill::source::DataSource;
use tidemill::spec::{Partition, Pipeline};

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn pipeline(data: &Path, cache: bool, epochs: u32, batch: usize, l2: f64) -> Pipeline {
    let per_step = std::env::var("UNITS_PER_STEP").unwrap_or_else(|_| "4".into());
    let text = format!(
        "[data]\ntrain = {:?}\nlabel = \"label\"\npartition = \"slice\"\ncache = {cache}\nunits_per_step = {per_step}\n\
         [model]\nkind = \"logistic\"\nl2 = {l2}\n\
         [optimizer]\nkind = \"sgd\"\nlearning_rate = 0.5\nbatch_size = {batch}\nschedule = \"inverse_sqrt\"\ndecay = 0.01\n\
         [train]\nepochs = {epochs}\n",
        data.join("dense_train.parquet").to_string_lossy()
    );
    Pipeline::parse(&text, Path::new("bench.toml"), &[]).expect("bench pipeline parses")
}

/// Reads and decodes every unit once, on `workers` threads (slice partition),
/// exactly as training decodes them, and throws the blocks away; `windowed`
/// reads 8192-row windows as streaming epochs do, else whole units.
fn scan(data: &Path, workers: usize, windowed: bool) -> Value {
    let plan = Arc::new(Plan::new(pipeline(data, true, 1, 4096, 0.0)).expect("plan"));
    let rows: Vec<usize> = plan.train.units().iter().map(|u| u.rows).collect();
    let owners = assign(&rows, workers, Partition::Slice, 0, 0);
    let spec = plan.scan_spec();
    let started = Instant::now();
    let handles: Vec<_> = (0..workers)
        .map(|w| {
            let plan = Arc::clone(&plan);
            let owners = owners.clone();
            let spec = spec.clone();
            std::thread::spawn(move || {
                let mut bytes = 0usize;
                let mut rows = 0usize;
                for unit in plan.train.units().iter().filter(|u| owners[u.id] == w) {
                    if windowed {
                        let split = tidemill::data::window::Split {
                            fraction: None,
                            seed: 0,
                        };
                        tidemill::data::window::for_each_window(
                            &*plan.train,
                            unit,
                            &spec,
                            LabelUse::Value,
                            split,
                            |d| {
                                bytes += d.train.heap_bytes();
                                rows += d.train.rows;
                                Ok(())
                            },
                        )
                        .expect("windowed scan");
                        continue;
                    }
                    let cols: Vec<String> = spec
                        .feature_columns()
                        .into_iter()
                        .chain([spec.label.clone()])
                        .collect();
                    // The whole unit as one batch.
                    let batch = plan
                        .train
                        .open(unit, &cols, unit.rows)
                        .expect("open")
                        .next()
                        .expect("a batch")
                        .expect("read");
                    let origin = tidemill::data::encode::Origin {
                        file: plan.train.unit_path(unit),
                        row_group: Some(unit.row_group),
                        first_row: unit.file_row,
                    };
                    let block = decode(&batch, &spec, LabelUse::Value, &origin).expect("decode");
                    bytes += block.heap_bytes();
                    rows += block.rows;
                }
                (rows, bytes)
            })
        })
        .collect();
    let (mut rows, mut bytes) = (0, 0);
    for h in handles {
        let (r, b) = h.join().expect("scan thread");
        rows += r;
        bytes += b;
    }
    let seconds = started.elapsed().as_secs_f64();
    json!({"mode": if windowed { "scan-windowed" } else { "scan" }, "workers": workers, "rows": rows, "seconds": seconds,
           "decoded_mb": bytes as f64 / (1024.0 * 1024.0), "peak_rss_mb": peak_rss_mb()})
}

fn train(data: &Path, workers: usize, cache: bool, epochs: u32, batch: usize, l2: f64) -> Value {
    let p = pipeline(data, cache, epochs, batch, l2);
    let started = Instant::now();
    let cluster = Cluster {
        workers,
        ..Cluster::default()
    };
    let report = tidemill::train::run(p, &cluster).expect("training runs");
    let total = started.elapsed().as_secs_f64();
    let train_rss = peak_rss_mb();
    let ends: Vec<f64> = report.records.iter().map(|r| r.elapsed_s).collect();
    let epoch_s: Vec<f64> = ends
        .iter()
        .enumerate()
        .map(|(i, &e)| e - if i == 0 { 0.0 } else { ends[i - 1] })
        .collect();
    // Steady state: epochs after the first (the first also decodes when caching).
    let steady = if epoch_s.len() > 1 {
        epoch_s[1..].iter().sum::<f64>() / (epoch_s.len() - 1) as f64
    } else {
        epoch_s[0]
    };
    let dir = tempfile_dir();
    let model_path = dir.join(format!("model-{workers}-{cache}.json"));
    std::fs::write(
        &model_path,
        report.model.expect("model").to_json().expect("json"),
    )
    .expect("write model");
    let test = data.join("dense_test.parquet");
    let eval_started = Instant::now();
    let m = tidemill::predict::evaluate(&model_path, &test.to_string_lossy()).expect("eval");
    json!({"mode": "train", "workers": workers, "cache": cache, "epochs": epochs, "batch_size": batch,
           "rows": report.train_rows, "epoch_s": epoch_s, "steady_epoch_s": steady, "total_s": total,
           "train_s": ends.last().copied().unwrap_or(0.0),
           "examples_per_s": report.train_rows as f64 * epochs as f64 / ends.last().copied().unwrap_or(1.0),
           "test_logloss": m.loss, "test_auc": m.auc, "eval_s": eval_started.elapsed().as_secs_f64(),
           "peak_rss_mb": train_rss, "peak_rss_with_eval_mb": peak_rss_mb()})
}

fn tempfile_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("tidemill-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn child(args: &[String]) -> Value {
    let exe = std::env::current_exe().expect("own path");
    let out = Command::new(exe).args(args).output().expect("child runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(text.lines().last().unwrap_or("{}")).expect("child prints JSON")
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let mode = args.first().map(String::as_str).unwrap_or("all");
    let data = PathBuf::from(args.get(1).cloned().unwrap_or_else(|| "/tmp/bench".into()));
    let num = |i: usize, d: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    match mode {
        "scan" => println!("{}", scan(&data, num(2, 1), false)),
        "scan-windowed" => println!("{}", scan(&data, num(2, 1), true)),
        "train" => {
            let workers = num(2, 1);
            let cache = args.get(3).map(|s| s == "true").unwrap_or(true);
            let epochs = num(4, 5) as u32;
            let batch = num(5, 4096);
            println!("{}", train(&data, workers, cache, epochs, batch, 1e-6));
        }
        "peer" => {
            // One line in the peer kit's format, to append to its results
            // file: the median wall of REPS runs (default 3), as the peers'.
            let workers = num(2, 2);
            let epochs = num(3, 5);
            let reps: usize = std::env::var("REPS")
                .ok()
                .and_then(|r| r.parse().ok())
                .unwrap_or(3)
                .max(1);
            let mut runs: Vec<(f64, Value)> = (0..reps)
                .map(|_| {
                    let started = Instant::now();
                    let t = child(&[
                        "train".into(),
                        data.to_string_lossy().to_string(),
                        workers.to_string(),
                        "true".into(),
                        epochs.to_string(),
                        "4096".into(),
                    ]);
                    (started.elapsed().as_secs_f64(), t)
                })
                .collect();
            runs.sort_by(|a, b| a.0.total_cmp(&b.0));
            let (wall, t) = runs.swap_remove(reps / 2);
            let name = if epochs == 5 {
                format!("tidemill-sgd-w{workers}")
            } else {
                format!("tidemill-sgd-w{workers}-e{epochs}")
            };
            println!(
                "{}",
                json!({"peer": name, "workload": "W1-dense", "sub": "w1-tidemill",
                       "rows": t["rows"], "epochs": epochs, "wall_s": wall,
                       "load_s": 0.0, "train_s": t["total_s"], "eval_s": t["eval_s"],
                       "examples_per_s": t["rows"].as_f64().unwrap_or(0.0) * epochs as f64 / t["total_s"].as_f64().unwrap_or(1.0),
                       "peak_rss_mb": t["peak_rss_mb"], "test_logloss": t["test_logloss"], "test_auc": t["test_auc"],
                       "n_test": 200000, "runs": reps,
                       "params": {"optimizer": "sgd", "learning_rate": 0.5, "schedule": "inverse_sqrt", "decay": 0.01,
                                  "batch_size": 4096, "l2": 1e-6, "workers": workers, "cache": true}})
            );
        }
        _ => {
            if !data.join("dense_train.parquet").exists() {
                eprintln!(
                    "{}/dense_train.parquet missing: run python3 benches/peers/gen_dense.py {}",
                    data.display(),
                    data.display()
                );
                std::process::exit(2);
            }
            let d = data.to_string_lossy().to_string();
            let mut lines = Vec::new();
            for w in [1, 2] {
                let s = child(&["scan".into(), d.clone(), w.to_string()]);
                eprintln!("{s}");
                for cache in [true, false] {
                    let t = child(&[
                        "train".into(),
                        d.clone(),
                        w.to_string(),
                        cache.to_string(),
                        "5".into(),
                        "4096".into(),
                    ]);
                    eprintln!("{t}");
                    lines.push((w, cache, s.clone(), t));
                }
            }
            println!("| workers | cache | steady epoch s | scan s | epoch / scan | examples/s | peak RSS MiB | decoded MiB | RSS / decoded | test log loss | test AUC |");
            println!("|---|---|---|---|---|---|---|---|---|---|---|");
            for (w, cache, s, t) in &lines {
                let scan_s = s["seconds"].as_f64().unwrap_or(f64::NAN);
                let epoch = t["steady_epoch_s"].as_f64().unwrap_or(f64::NAN);
                let decoded = s["decoded_mb"].as_f64().unwrap_or(f64::NAN);
                let rss = t["peak_rss_mb"].as_f64().unwrap_or(f64::NAN);
                println!(
                    "| {w} | {cache} | {epoch:.3} | {scan_s:.3} | {:.2} | {:.3e} | {rss:.0} | {decoded:.0} | {:.2} | {:.5} | {:.5} |",
                    epoch / scan_s,
                    t["examples_per_s"].as_f64().unwrap_or(f64::NAN),
                    rss / decoded,
                    t["test_logloss"].as_f64().unwrap_or(f64::NAN),
                    t["test_auc"].as_f64().unwrap_or(f64::NAN),
                );
            }
            for (_, _, s, t) in &lines {
                println!("{s}");
                println!("{t}");
            }
        }
    }
}
