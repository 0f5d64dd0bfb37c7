//! Supervised runs (`train --max-restarts R`) with real processes and real
//! signals: a job whose process is killed with SIGKILL is restarted from
//! its checkpoint and ends with the model of an uninterrupted run; a job
//! killed on every attempt, or whose worker thread panics every time,
//! stops once the restarts are used up; a failure a rerun would repeat is
//! not restarted; SIGTERM to the supervisor reaches the job and restarts
//! nothing; and restarts without checkpoints are refused.
//!
//! The supervisor logs `job started pid=N` for each child it starts (the
//! tests run it with `TIDEMILL_LOG=info` and read its stderr as it comes);
//! rounds are slowed with `TIDEMILL_SLOW_WORKER`, which changes timing,
//! never what is trained.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, ExitStatus};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{start, wait_until};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The adult job of the brief, with checkpoints in `dir/ck`.
fn args(dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "train",
        "pipelines/adult.toml",
        "--model-out",
        &dir.join("model.json").display().to_string(),
        "--metrics-out",
        &dir.join("metrics.jsonl").display().to_string(),
        "--set",
        &format!("output.checkpoint=\"{}\"", dir.join("ck").display()),
        "--set",
        "train.epochs=6",
        "--set",
        "optimizer.batch_size=2048",
    ]
    .map(String::from)
    .into();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// A supervisor running, its stderr read as it comes.
struct Supervisor {
    child: Child,
    stderr: Arc<Mutex<String>>,
    stdout_reader: JoinHandle<String>,
    stderr_reader: JoinHandle<()>,
}

impl Supervisor {
    /// Starts `tidemill ARGS` at log level info with `envs` and a short
    /// restart backoff.
    fn start(args: &[String], envs: &[(&str, &str)]) -> Supervisor {
        let mut all = args.to_vec();
        all.extend(["--restart-backoff".into(), "0.05".into()]);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let mut envs = envs.to_vec();
        envs.push(("TIDEMILL_LOG", "info"));
        let mut child = start(&all, &envs);
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        let stderr_reader = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let line = line.unwrap();
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let mut pipe = child.stdout.take().unwrap();
        let stdout_reader = std::thread::spawn(move || {
            let mut out = String::new();
            pipe.read_to_string(&mut out).unwrap();
            out
        });
        Supervisor {
            child,
            stderr,
            stdout_reader,
            stderr_reader,
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The pid of the `n`th child (1-based), once the supervisor has said
    /// it started.
    fn child_pid(&self, n: usize) -> Pid {
        let mut pid = None;
        wait_until(&format!("child {n} to start"), || {
            pid = started(&self.stderr()).get(n - 1).copied();
            pid.is_some()
        });
        Pid::from_raw(pid.unwrap())
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// Waits for the supervisor to exit (at most `limit`); returns its
    /// status, stdout and stderr.
    fn finish(mut self, limit: Duration) -> (ExitStatus, String, String) {
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > limit {
                self.child.kill().unwrap();
                self.child.wait().unwrap();
                panic!("still running after {limit:?}: {}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stdout = self.stdout_reader.join().unwrap();
        self.stderr_reader.join().unwrap();
        let stderr = self.stderr.lock().unwrap().clone();
        (status, stdout, stderr)
    }
}

/// The adult job under `--max-restarts restarts`, with `extra` arguments
/// and its rounds slowed.
fn supervised(dir: &Path, restarts: &str, extra: &[&str]) -> Supervisor {
    let mut all = vec!["--max-restarts", restarts];
    all.extend(extra);
    Supervisor::start(&args(dir, &all), &[("TIDEMILL_SLOW_WORKER", "0:25")])
}

/// The pids of the children the supervisor said it started, in order.
fn started(stderr: &str) -> Vec<i32> {
    stderr
        .lines()
        .filter(|l| l.contains("job started"))
        .filter_map(|l| {
            let digits = l.split("pid=").nth(1)?;
            digits
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// True once `dir/ck` holds a checkpoint (files are numbered by the step
/// count they were taken at).
fn has_checkpoint(dir: &Path) -> bool {
    std::fs::read_dir(dir.join("ck")).is_ok_and(|mut entries| {
        entries.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".tmck")))
    })
}

/// Runs the unsupervised job to the end in `dir` and returns its model.
fn uninterrupted(dir: &Path) -> Vec<u8> {
    let args = args(dir, &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = common::finish(start(&args, &[]), Duration::from_secs(60));
    common::assert_success(&out, "the uninterrupted run");
    std::fs::read(dir.join("model.json")).unwrap()
}

#[test]
fn a_job_killed_with_sigkill_is_restarted_and_ends_with_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    let reference = uninterrupted(dir.path());
    std::fs::remove_dir_all(dir.path().join("ck")).unwrap();
    std::fs::remove_file(dir.path().join("model.json")).unwrap();
    let run = supervised(dir.path(), "2", &[]);
    wait_until("the first checkpoint", || has_checkpoint(dir.path()));
    kill(run.child_pid(1), Signal::SIGKILL).unwrap();
    let (status, stdout, stderr) = run.finish(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("restarting (1/2) after the job was killed by SIGKILL: resuming from")
            && stderr.contains(&dir.path().join("ck").display().to_string()),
        "{stderr}"
    );
    assert_eq!(started(&stderr).len(), 2, "{stderr}");
    assert_eq!(stdout.matches("\"epochs\": 6").count(), 1, "{stdout}");
    assert!(
        std::fs::read(dir.path().join("model.json")).unwrap() == reference,
        "the restarted job's model differs from the uninterrupted one"
    );
}

#[test]
fn a_job_killed_on_every_attempt_stops_when_the_restarts_are_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let run = supervised(dir.path(), "1", &[]);
    for n in 1..=2 {
        kill(run.child_pid(n), Signal::SIGKILL).unwrap();
    }
    let (status, _, stderr) = run.finish(Duration::from_secs(30));
    assert_eq!(status.code(), Some(137), "{stderr}");
    assert!(
        stderr.contains("restarts are exhausted (1 of 1 used): the job was killed by SIGKILL"),
        "{stderr}"
    );
    assert_eq!(started(&stderr).len(), 2, "{stderr}");
    assert!(!dir.path().join("model.json").exists());
}

#[test]
fn a_panicking_worker_thread_is_restarted_until_the_restarts_are_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let run = Supervisor::start(
        &args(dir.path(), &["--max-restarts", "1"]),
        &[("TIDEMILL_INJECT_PANIC", "worker")],
    );
    let (status, _, stderr) = run.finish(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("restarting (1/1) after the job exited with code 1 (internal error): resuming from the start"),
        "{stderr}"
    );
    assert!(stderr.contains("restarts are exhausted"), "{stderr}");
    assert_eq!(started(&stderr).len(), 2, "{stderr}");
}

#[test]
fn a_failure_a_rerun_would_repeat_is_not_restarted() {
    // (override, exit code, children started): bad data and a model over
    // the worker budget fail in the child; a bad value fails the
    // supervisor's own reading of the pipeline, before any child.
    for (setting, code, children) in [
        ("data.label=\"nope\"", 4, 1),
        ("train.max_worker_params=1", 2, 1),
        ("model.l2=-1", 2, 0),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let run = supervised(dir.path(), "3", &["--set", setting]);
        let (status, _, stderr) = run.finish(Duration::from_secs(30));
        assert_eq!(status.code(), Some(code), "{setting}: {stderr}");
        assert_eq!(started(&stderr).len(), children, "{setting}: {stderr}");
        assert!(!stderr.contains("restarting"), "{setting}: {stderr}");
        if children > 0 {
            assert!(
                stderr.contains("a rerun would fail the same way; not restarted"),
                "{setting}: {stderr}"
            );
        }
    }
}

#[test]
fn sigterm_to_the_supervisor_reaches_the_job_and_restarts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let run = supervised(dir.path(), "2", &[]);
    let child = run.child_pid(1);
    wait_until("the first checkpoint", || has_checkpoint(dir.path()));
    kill(run.pid(), Signal::SIGTERM).unwrap();
    let (status, _, stderr) = run.finish(Duration::from_secs(30));
    assert_eq!(status.code(), Some(143), "{stderr}");
    // The child's own line (it stops at a checkpoint), then the
    // supervisor's.
    assert!(stderr.contains("error: stopped by SIGTERM"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "interrupted by SIGTERM: passed it on to the job (pid {child}), which exited with code 143"
        )),
        "{stderr}"
    );
    assert_eq!(started(&stderr).len(), 1, "{stderr}");
    assert!(!stderr.contains("restarting"), "{stderr}");
    assert!(!dir.path().join("model.json").exists());
    assert!(
        kill(child, None).is_err(),
        "the job still runs after the supervisor exited"
    );
}

#[test]
fn restarts_without_checkpoints_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.json").display().to_string();
    let out = common::tidemill(&[
        "train",
        "pipelines/adult.toml",
        "--model-out",
        &model,
        "--max-restarts",
        "2",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--max-restarts") && stderr.contains("output.checkpoint"),
        "{stderr}"
    );
    assert!(started(&stderr).is_empty(), "{stderr}");
}
