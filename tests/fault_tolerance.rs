//! Fault tolerance with real processes and real signals: a job killed with
//! SIGKILL in the middle of an epoch and resumed with `--resume` (on the
//! same or another worker count, or as one process after two) ends with
//! the bit-identical model of an uninterrupted run; a truncated or
//! bit-flipped newest checkpoint is skipped for the one before it; a job
//! killed at random points ten times still ends with that model.
//!
//! Training rounds are slowed with `TIDEMILL_SLOW_WORKER` (which changes
//! timing, never what is trained) so that a kill lands inside an epoch.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Output};
use std::time::{Duration, Instant};

use common::{finish, start};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A training job on the adult data with checkpoints in `dir`.
struct Job {
    dir: PathBuf,
    settings: Vec<String>,
}

impl Job {
    fn new(dir: &Path, epochs: u32, settings: &[&str]) -> Job {
        let mut all = vec![
            format!("output.checkpoint=\"{}\"", dir.join("ck").display()),
            "output.checkpoint_keep=100".into(),
            format!("train.epochs={epochs}"),
            "optimizer.batch_size=2048".into(),
        ];
        all.extend(settings.iter().map(|s| s.to_string()));
        Job {
            dir: dir.to_path_buf(),
            settings: all,
        }
    }

    fn checkpoints(&self) -> PathBuf {
        self.dir.join("ck")
    }

    fn model(&self) -> PathBuf {
        self.dir.join("model.json")
    }

    /// The arguments of `train` on `workers` workers, plus `extra`.
    fn args(&self, workers: usize, extra: &[&str]) -> Vec<String> {
        let mut args = vec![
            "train".to_string(),
            "pipelines/adult.toml".into(),
            "--workers".into(),
            workers.to_string(),
            "--model-out".into(),
            self.model().display().to_string(),
            "--metrics-out".into(),
            self.dir.join("metrics.jsonl").display().to_string(),
        ];
        for s in &self.settings {
            args.push("--set".into());
            args.push(s.clone());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    fn start(&self, workers: usize, extra: &[&str], envs: &[(&str, &str)]) -> Child {
        let args = self.args(workers, extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        start(&args, envs)
    }

    /// Runs to the end and returns the model's bytes.
    fn run(&self, workers: usize, extra: &[&str]) -> Vec<u8> {
        let out = finish(self.start(workers, extra, &[]), Duration::from_secs(120));
        assert!(
            out.status.success(),
            "train {extra:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::read(self.model()).unwrap()
    }

    /// Starts a slowed run, waits for its `k`-th checkpoint, lets it train
    /// a few rounds into the next epoch, and kills it with SIGKILL.
    fn kill_after(&self, workers: usize, k: usize, slow_ms: u64, extra: &[&str]) {
        let slow = format!("0:{slow_ms}");
        let child = self.start(workers, extra, &[("TIDEMILL_SLOW_WORKER", &slow)]);
        wait_for_count(&self.checkpoints(), k, Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(2 * slow_ms));
        let out = sigkill(child);
        assert_eq!(
            out.status.code(),
            None,
            "the job ended before it was killed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!self.model().exists(), "a killed job left a model behind");
    }
}

/// The checkpoint files in `dir`, oldest first (numbered by position).
fn checkpoint_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "tmck"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Waits until `dir` holds `k` checkpoints.
fn wait_for_count(dir: &Path, k: usize, limit: Duration) {
    let started = Instant::now();
    while count(dir) < k {
        assert!(
            started.elapsed() < limit,
            "{} did not get {k} checkpoints within {limit:?}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Kills `child` with SIGKILL and collects what it wrote.
fn sigkill(child: Child) -> Output {
    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    finish(child, Duration::from_secs(30))
}

/// For each case: the uninterrupted model on 2 workers, then a run on 2
/// workers killed in the epoch after checkpoint `k`, resumed on
/// `resume_workers` workers.
fn killed_and_resumed(strategy: &str, cases: &[(&str, &str, u64)], resume_workers: &[usize]) {
    let mut n = 0;
    for partition in ["slice", "shuffle"] {
        for &(optimizer, extra, slow_ms) in cases {
            let dir = tempfile::tempdir().unwrap();
            let mut settings = vec![
                format!("train.strategy=\"{strategy}\""),
                format!("data.partition=\"{partition}\""),
                format!("optimizer.kind=\"{optimizer}\""),
            ];
            settings.extend(extra.split_whitespace().map(String::from));
            let settings: Vec<&str> = settings.iter().map(String::as_str).collect();
            let job = Job::new(dir.path(), 6, &settings);
            let reference = job.run(2, &[]);
            std::fs::remove_dir_all(job.checkpoints()).unwrap();
            std::fs::remove_file(job.model()).unwrap();
            let k = 1 + n % 2;
            job.kill_after(2, k, slow_ms, &[]);
            let workers = resume_workers[n % resume_workers.len()];
            let resumed = job.run(workers, &["--resume"]);
            assert!(
                resumed == reference,
                "{strategy} {partition} {optimizer}: killed after checkpoint {k} on 2 workers, resumed on {workers}: the model differs from the uninterrupted one"
            );
            n += 1;
        }
    }
}

#[test]
fn allreduce_killed_mid_epoch_resumes_to_the_same_model_on_any_worker_count() {
    killed_and_resumed(
        "allreduce",
        &[
            ("sgd", "model.l1=0.0001", 25),
            ("adam", "optimizer.learning_rate=0.01", 25),
            ("lbfgs", "", 150),
            // Sharded L-BFGS: its pieces are saved with each owner's part.
            ("lbfgs", "optimizer.sharded=true model.l1=0.0001", 150),
            // A network (its hashed columns sparse, as a linear model's).
            (
                "adam",
                "model.kind=\"mlp\" model.hidden=[16] optimizer.learning_rate=0.003",
                25,
            ),
        ],
        &[1, 3],
    );
}

/// Where the gradients are folded (`train.fold`) does not change the model,
/// so it is not part of the job: a job killed while every worker folded
/// resumes with the owners folding, and back, to the same model.
#[test]
fn a_job_resumes_with_the_other_fold_to_the_same_model() {
    for (first, then) in [("every-worker", "owners"), ("owners", "every-worker")] {
        let dir = tempfile::tempdir().unwrap();
        let job = Job::new(
            dir.path(),
            6,
            &["optimizer.kind=\"adam\"", "optimizer.learning_rate=0.01"],
        );
        let reference = job.run(2, &[]);
        std::fs::remove_dir_all(job.checkpoints()).unwrap();
        std::fs::remove_file(job.model()).unwrap();
        let first = format!("train.fold={first}");
        job.kill_after(2, 1, 25, &["--set", &first]);
        let then = format!("train.fold={then}");
        let resumed = job.run(3, &["--set", &then, "--resume"]);
        assert!(
            resumed == reference,
            "killed with {first} on 2 workers, resumed with {then} on 3: the model differs"
        );
    }
}

#[test]
fn param_server_killed_mid_epoch_resumes_to_the_same_model_on_any_worker_count() {
    // Synchronous: bounded staleness is not reproducible bit for bit even
    // uninterrupted (docs/strategies.md), so nothing to compare against.
    // (L-BFGS takes full-batch steps: allreduce only.)
    killed_and_resumed(
        "param-server",
        &[
            ("sgd", "train.staleness=0 model.l1=0.0001", 25),
            ("adam", "train.staleness=0 optimizer.learning_rate=0.01", 25),
        ],
        &[3, 1],
    );
}

#[test]
fn model_average_killed_mid_epoch_resumes_to_the_same_model_on_its_worker_count() {
    killed_and_resumed(
        "model-average",
        &[
            ("sgd", "model.l1=0.0001 train.sync_every=4", 25),
            ("adam", "optimizer.learning_rate=0.01", 25),
        ],
        &[2],
    );
}

#[test]
fn model_average_with_fixed_replicas_resumes_to_the_same_model_on_any_worker_count() {
    // Four replicas: which rows each trains, and its optimizer state, do
    // not depend on the worker count, so neither does the checkpoint.
    killed_and_resumed(
        "model-average",
        &[
            (
                "sgd",
                "train.replicas=4 model.l1=0.0001 train.sync_every=4",
                25,
            ),
            ("adam", "train.replicas=4 optimizer.learning_rate=0.01", 25),
        ],
        &[1, 3],
    );
}

#[test]
fn model_average_without_fixed_replicas_resumes_only_on_its_worker_count() {
    let dir = tempfile::tempdir().unwrap();
    let job = Job::new(dir.path(), 1, &["train.strategy=\"model-average\""]);
    job.run(2, &[]);
    std::fs::remove_file(job.model()).unwrap();
    let out = finish(job.start(1, &["--resume"], &[]), Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("written by 2 workers and model-average resumes only on as many")
            && stderr.contains("set train.replicas"),
        "{stderr}"
    );
    assert!(!job.model().exists());
}

#[test]
fn checkpoints_inside_an_epoch_resume_to_the_same_model() {
    // "5 steps" cuts epochs of 13 steps; model-average's rounds of 3 steps
    // pass multiples of 5 inside an epoch too. Killed after the third
    // checkpoint (inside the first epoch's second half or the second epoch).
    let cases: [(&str, &[&str], usize); 5] = [
        ("allreduce", &["model.l1=0.0001", "model.l2=0.001"], 3),
        // Resumes on the worker count that wrote it; lazy FTRL steps
        // resume with their clock mid-epoch.
        (
            "model-parallel",
            &[
                "optimizer.kind=\"ftrl\"",
                "model.l1=0.0001",
                "model.l2=0.001",
            ],
            2,
        ),
        (
            "param-server",
            &[
                "train.staleness=0",
                "optimizer.kind=\"adam\"",
                "optimizer.learning_rate=0.01",
            ],
            1,
        ),
        (
            "model-average",
            &[
                "train.sync_every=3",
                "optimizer.kind=\"adam\"",
                "optimizer.learning_rate=0.01",
            ],
            2,
        ),
        // Fixed replicas resume mid-epoch on another worker count.
        (
            "model-average",
            &[
                "train.replicas=3",
                "train.sync_every=3",
                "optimizer.kind=\"adam\"",
                "optimizer.learning_rate=0.01",
            ],
            3,
        ),
    ];
    for (strategy, extra, workers) in cases {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = vec![
            format!("train.strategy=\"{strategy}\""),
            "output.checkpoint_every=\"5 steps\"".to_string(),
            "data.partition=\"shuffle\"".to_string(),
        ];
        settings.extend(extra.iter().map(|s| s.to_string()));
        let settings: Vec<&str> = settings.iter().map(String::as_str).collect();
        let job = Job::new(dir.path(), 3, &settings);
        let reference = job.run(2, &[]);
        let written = newest(&job.checkpoints());
        std::fs::remove_dir_all(job.checkpoints()).unwrap();
        std::fs::remove_file(job.model()).unwrap();
        let child = job.start(2, &[], &[("TIDEMILL_SLOW_WORKER", "0:25")]);
        let ck = job.checkpoints();
        let started = Instant::now();
        while count(&ck) < 3 {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no third checkpoint"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(40));
        let out = sigkill(child);
        assert_eq!(out.status.code(), None, "it ended before the kill");
        let at = newest(&ck);
        assert!(at < written, "killed after its last checkpoint");
        let resumed = job.run(workers, &["--resume"]);
        assert!(
            resumed == reference,
            "{strategy}: resumed from step {at} on {workers} workers, the model differs"
        );
    }
}

/// Checkpoint files in `dir`.
fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmck"))
            .count()
    })
}

#[test]
fn a_truncated_or_bit_flipped_checkpoint_is_skipped_for_the_one_before() {
    let dir = tempfile::tempdir().unwrap();
    let job = Job::new(dir.path(), 4, &[]);
    let reference = job.run(2, &[]);
    let ck = job.checkpoints();
    let files = checkpoint_files(&ck);
    assert_eq!(files.len(), 4, "one checkpoint per epoch");
    // The newest cut short, the one before it with one bit flipped.
    let newest = files[3].clone();
    let bytes = std::fs::read(&newest).unwrap();
    std::fs::write(&newest, &bytes[..bytes.len() / 2]).unwrap();
    let flipped = files[2].clone();
    let mut bytes = std::fs::read(&flipped).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(&flipped, &bytes).unwrap();
    std::fs::remove_file(job.model()).unwrap();
    let child = job.start(1, &["--resume"], &[("TIDEMILL_LOG", "info")]);
    let out = finish(child, Duration::from_secs(120));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for skipped in [&newest, &flipped] {
        assert!(
            stderr.contains(&format!("skipping checkpoint {}", skipped.display()))
                || stderr.contains(&format!("checkpoint={}", skipped.display())),
            "no warning names {}: {stderr}",
            skipped.display()
        );
    }
    let used = files[1].clone();
    assert!(
        stderr.contains(&format!("resuming checkpoint={}", used.display())),
        "did not resume from {}: {stderr}",
        used.display()
    );
    assert!(
        std::fs::read(job.model()).unwrap() == reference,
        "resuming past damaged checkpoints changed the model"
    );
}

#[test]
fn a_checkpoint_of_another_job_is_refused_naming_what_differs() {
    let dir = tempfile::tempdir().unwrap();
    let job = Job::new(dir.path(), 1, &[]);
    job.run(1, &[]);
    std::fs::remove_file(job.model()).unwrap();
    let other = Job::new(dir.path(), 1, &["model.l2=0.5"]);
    let out = finish(other.start(1, &["--resume"], &[]), Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("written by another job")
            && stderr.contains("model.l2 = 0.0001 there, 0.5 here"),
        "{stderr}"
    );
    assert!(!other.model().exists(), "a refused resume wrote a model");
}

#[test]
fn a_job_killed_at_random_points_ten_times_ends_with_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    let job = Job::new(
        dir.path(),
        8,
        &["data.partition=\"shuffle\"", "optimizer.kind=\"adam\""],
    );
    let reference = job.run(2, &[]);
    std::fs::remove_dir_all(job.checkpoints()).unwrap();
    std::fs::remove_file(job.model()).unwrap();
    // A fixed sequence of kill times (ms after the start), from a seeded
    // generator: reproducible, and spread over start-up, epochs and writes.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut killed_after_progress = 0;
    for round in 0..10 {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let delay = 150 + (state >> 33) % 700;
        let before = newest(&job.checkpoints());
        let workers = 1 + round % 3;
        let child = job.start(workers, &["--resume"], &[("TIDEMILL_SLOW_WORKER", "0:20")]);
        std::thread::sleep(Duration::from_millis(delay));
        let out = sigkill(child);
        if out.status.code().is_some() {
            // It finished before the kill: nothing left to interrupt.
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            break;
        }
        if newest(&job.checkpoints()) > before {
            killed_after_progress += 1;
        }
    }
    assert!(
        killed_after_progress >= 3,
        "too few kills landed after some progress ({killed_after_progress}): the soak tests nothing"
    );
    let resumed = job.run(2, &["--resume"]);
    assert!(
        resumed == reference,
        "after ten kills and resumes the model differs from the uninterrupted one"
    );
}

/// The newest checkpoint's number in `dir` (0 if none).
fn newest(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| {
                    let name = e.ok()?.file_name().into_string().ok()?;
                    name.strip_prefix("checkpoint-")?
                        .strip_suffix(".tmck")?
                        .parse()
                        .ok()
                })
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// A job's uninterrupted model (one process, two workers), and the same
/// job started as two slowed processes of one worker each.
fn two_processes(dir: &Path) -> (Job, Vec<u8>, [Child; 2]) {
    let job = Job::new(dir, 4, &["data.partition=\"shuffle\""]);
    let reference = job.run(2, &[]);
    std::fs::remove_dir_all(job.checkpoints()).unwrap();
    std::fs::remove_file(job.model()).unwrap();
    let hosts = common::hostfile(dir, 2).display().to_string();
    let spawn = |p: &str| {
        job.start(
            1,
            &["--processes", "2", "--process", p, "--hostfile", &hosts],
            &[("TIDEMILL_SLOW_WORKER", "0:25")],
        )
    };
    let children = [spawn("0"), spawn("1")];
    (job, reference, children)
}

#[test]
fn a_two_process_job_that_loses_a_process_resumes_as_one() {
    let dir = tempfile::tempdir().unwrap();
    let (job, reference, [survivor, victim]) = two_processes(dir.path());
    wait_for_count(&job.checkpoints(), 1, Duration::from_secs(60));
    sigkill(victim);
    let killed = Instant::now();
    let out = finish(survivor, Duration::from_secs(30));
    let noticed = killed.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        noticed < Duration::from_secs(10),
        "took {noticed:?}: {stderr}"
    );
    assert_eq!(out.status.code(), Some(7), "{stderr}");
    assert!(
        stderr.contains("lost the connection to a peer process (process 1 at 127.0.0.1:"),
        "{stderr}"
    );
    assert!(
        stderr.contains("rerun with --resume")
            && stderr.contains(&job.checkpoints().display().to_string()),
        "the message does not name the checkpoint to resume from: {stderr}"
    );
    assert!(!job.model().exists(), "a failed cluster run wrote a model");
    let resumed = job.run(2, &["--resume"]);
    assert!(
        resumed == reference,
        "resumed as one process with two workers, the model differs"
    );
}

/// Sends `signal` to a slowed job once it has written its first
/// checkpoint: it must stop at a checkpoint of its own, exit 128 + the
/// signal, say so, and write no model.
fn stopped_by(job: &Job, workers: usize, signal: Signal, extra: &[&str]) -> Output {
    let child = job.start(workers, extra, &[("TIDEMILL_SLOW_WORKER", "0:25")]);
    wait_for_count(&job.checkpoints(), 1, Duration::from_secs(60));
    let before = newest(&job.checkpoints());
    std::thread::sleep(Duration::from_millis(60));
    kill(Pid::from_raw(child.id() as i32), signal).unwrap();
    let out = finish(child, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(128 + signal as i32), "{stderr}");
    assert!(
        stderr.contains(&format!("stopped by {}", signal.as_str())),
        "{stderr}"
    );
    assert!(
        newest(&job.checkpoints()) > before,
        "no checkpoint where it stopped: {stderr}"
    );
    assert!(!job.model().exists(), "a stopped job wrote a model");
    out
}

#[test]
fn sigterm_and_sigint_stop_at_a_checkpoint_that_resumes_to_the_same_model() {
    // Synchronous first-order steps stop at the next step; model-average
    // at the next epoch boundary; model-parallel at the next step, on the
    // worker count that wrote it.
    let cases: [(&str, &[&str], Signal, usize); 3] = [
        (
            "allreduce",
            &["optimizer.kind=\"adam\""],
            Signal::SIGTERM,
            1,
        ),
        ("model-average", &["train.sync_every=3"], Signal::SIGINT, 2),
        (
            "model-parallel",
            &["optimizer.kind=\"adagrad\"", "optimizer.learning_rate=0.05"],
            Signal::SIGTERM,
            2,
        ),
    ];
    for (strategy, extra, signal, workers) in cases {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = vec![format!("train.strategy=\"{strategy}\"")];
        settings.extend(extra.iter().map(|s| s.to_string()));
        let settings: Vec<&str> = settings.iter().map(String::as_str).collect();
        let job = Job::new(dir.path(), 4, &settings);
        let reference = job.run(2, &[]);
        std::fs::remove_dir_all(job.checkpoints()).unwrap();
        std::fs::remove_file(job.model()).unwrap();
        stopped_by(&job, 2, signal, &[]);
        let resumed = job.run(workers, &["--resume"]);
        assert!(
            resumed == reference,
            "{strategy}: stopped by {signal}, resumed on {workers} workers: the model differs"
        );
    }
}

#[test]
fn sigterm_to_one_process_stops_the_cluster_at_one_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (job, reference, [first, second]) = two_processes(dir.path());
    wait_for_count(&job.checkpoints(), 1, Duration::from_secs(60));
    let before = newest(&job.checkpoints());
    kill(Pid::from_raw(second.id() as i32), Signal::SIGTERM).unwrap();
    for (name, child) in [("process 1", second), ("process 0", first)] {
        let out = finish(child, Duration::from_secs(60));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(143), "{name}: {stderr}");
        assert!(stderr.contains("stopped by SIGTERM"), "{name}: {stderr}");
    }
    assert!(
        newest(&job.checkpoints()) > before,
        "no checkpoint where it stopped"
    );
    assert!(!job.model().exists(), "a stopped job wrote a model");
    let resumed = job.run(2, &["--resume"]);
    assert!(
        resumed == reference,
        "resumed as one process: the model differs"
    );
}

#[test]
fn model_parallel_killed_mid_epoch_resumes_to_the_same_model() {
    // Blocks are cut by the worker count and margins summed over them, so
    // the model differs in its last bits between worker counts: a
    // checkpoint resumes on the count that wrote it. (L-BFGS takes
    // full-batch steps: allreduce only.)
    killed_and_resumed(
        "model-parallel",
        &[
            ("sgd", "model.l1=0.0001", 25),
            ("adam", "optimizer.learning_rate=0.01", 25),
        ],
        &[2],
    );
    let dir = tempfile::tempdir().unwrap();
    let job = Job::new(dir.path(), 1, &["train.strategy=\"model-parallel\""]);
    job.run(2, &[]);
    std::fs::remove_file(job.model()).unwrap();
    let out = finish(job.start(3, &["--resume"], &[]), Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("written by 2 workers and model-parallel resumes only on as many"),
        "{stderr}"
    );
    assert!(!job.model().exists(), "a refused resume wrote a model");
}

#[test]
fn a_fresh_run_beside_checkpoints_and_steps_without_the_row_cache_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let job = Job::new(dir.path(), 1, &[]);
    job.run(1, &[]);
    std::fs::remove_file(job.model()).unwrap();
    // Without --resume its checkpoints would be pruned as older than the
    // other run's, or a later resume would continue that run.
    let out = finish(job.start(1, &[], &[]), Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("already holds checkpoints") && stderr.contains("--resume"),
        "{stderr}"
    );
    assert!(!job.model().exists());
    // Streamed units are read from their start: no resuming inside epochs.
    let other = tempfile::tempdir().unwrap();
    let streamed = Job::new(
        other.path(),
        1,
        &["data.cache=false", "output.checkpoint_every=\"5 steps\""],
    );
    let out = finish(streamed.start(1, &[], &[]), Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("data.cache = false"), "{stderr}");
}
