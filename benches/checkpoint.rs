//! Checkpoint cost of a dense model: every coordinate of the parameters
//! and of two optimizer moments (Adam) non-zero, the worst case for the
//! checkpoint's size. For each size 10^3 … 10^7: the time an owner takes
//! to copy its shard's state (on the training thread), to put the
//! checkpoint together and encode it (worker 0), and to write it (a
//! temporary file, fsync, rename, fsync of the directory), and its bytes.
//! Median of `REPS` (default 3) runs per size.
//!
//! ```sh
//! cargo bench --bench checkpoint [-- DIR]   # DIR: where to write (default a temp dir)
//! ```

use std::time::Instant;

use tidemill::checkpoint::store::Store;
use tidemill::dataflow::scan::ScanResult;
use tidemill::dataflow::snapshot::CollectorState;
use tidemill::optim::FirstOrderState;
use tidemill::strategy::snapshot::{DriverState, Saved, Stored, PAYLOAD_VERSION};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let dir = std::env::args()
        .nth(1)
        .filter(|a| a != "--bench")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("tidemill-ck-{}", std::process::id()))
        });
    let reps: usize = std::env::var("REPS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let store = Store::open(&dir).expect("a checkpoint directory");
    println!("| parameters | bytes | bytes / parameter | copy (s) | encode (s) | write (s) |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for exp in 3..=7 {
        let n = 10usize.pow(exp);
        let params: Vec<f64> = (0..n).map(|i| 1.0 + i as f64 * 1e-9).collect();
        let state = FirstOrderState {
            t: 100,
            m: params.iter().map(|x| x * 0.5).collect(),
            v: params.iter().map(|x| x * x).collect(),
        };
        let live: Vec<usize> = (0..n).collect();
        let (mut copy, mut encode, mut write, mut bytes) = (Vec::new(), Vec::new(), Vec::new(), 0);
        for r in 0..reps {
            let t = Instant::now();
            let stored = Stored::of(0, &params, &state, None, &live, None, Some(&live));
            copy.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            let saved = Saved {
                version: PAYLOAD_VERSION,
                identity: "{}".into(),
                strategy: "allreduce".into(),
                workers: 1,
                scan: ScanResult::default(),
                collector: CollectorState::default(),
                replicas: Vec::new(),
                shards: vec![stored],
                driver: DriverState {
                    epoch: 1,
                    objective: None,
                    done: false,
                    steps: 100,
                    clock: Vec::new(),
                    lbfgs: None,
                    next: None,
                    epoch_loss: Default::default(),
                    epoch_rows: 0,
                },
                sharded_lbfgs: None,
            };
            let payload = saved.encode().expect("encodes");
            encode.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            store.write(r as u64, &payload).expect("writes");
            write.push(t.elapsed().as_secs_f64());
            bytes = payload.len();
        }
        store.prune(1).expect("prunes");
        println!(
            "| {n} | {bytes} | {:.1} | {:.4} | {:.4} | {:.4} |",
            bytes as f64 / n as f64,
            median(copy),
            median(encode),
            median(write)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
