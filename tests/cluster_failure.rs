//! A process of a cluster dies, or stops answering: the others fail fast
//! with a clear message and exit code 7, and write nothing.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{hidden_beside, root};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[test]
fn surviving_process_fails_fast_when_a_peer_dies() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = common::hostfile(dir.path(), 2);
    let model = dir.path().join("model.json");
    let spawn = |p: usize| {
        Command::new(env!("CARGO_BIN_EXE_tidemill"))
            .current_dir(root())
            .env("TIDEMILL_LOG", "warn")
            // Long enough to be killed mid-training.
            .args([
                "train",
                "pipelines/nycflights.toml",
                "-n",
                "2",
                "-p",
                &p.to_string(),
                "--set",
                "train.epochs=50",
            ])
            .arg("--hostfile")
            .arg(&hosts)
            .arg("--model-out")
            .arg(&model)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let survivor = spawn(0);
    let mut victim = spawn(1);
    std::thread::sleep(Duration::from_secs(3));
    victim.kill().unwrap();
    victim.wait().unwrap();
    let killed_at = Instant::now();
    let out = survivor.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        killed_at.elapsed() < Duration::from_secs(20),
        "the survivor took too long to notice"
    );
    assert_eq!(out.status.code(), Some(7), "{stderr}");
    assert!(
        stderr.contains("lost the connection to a peer process"),
        "{stderr}"
    );
    assert!(!model.exists(), "a failed cluster run wrote a model");
}

/// A child process that is killed (and woken, if it was stopped) when the
/// test ends, however it ends.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let pid = Pid::from_raw(self.0.id() as i32);
        let _ = kill(pid, Signal::SIGKILL);
        let _ = kill(pid, Signal::SIGCONT);
        let _ = self.0.wait();
    }
}

#[test]
fn a_stopped_peer_is_detected_within_the_peer_timeout() {
    // SIGSTOP leaves the peer's connections open: only its silence shows.
    let dir = tempfile::tempdir().unwrap();
    let hosts = common::hostfile(dir.path(), 2);
    let listed = std::fs::read_to_string(&hosts).unwrap();
    let victim_address = listed.lines().nth(1).unwrap();
    let model = dir.path().join("model.json");
    let metrics = dir.path().join("metrics.jsonl");
    let (hosts, model_out, metrics_out) = (
        hosts.to_string_lossy(),
        model.to_string_lossy(),
        metrics.to_string_lossy(),
    );
    let args = |p: &'static str| {
        [
            "train",
            "pipelines/nycflights.toml",
            "-n",
            "2",
            "-p",
            p,
            // Far more epochs than the test lasts.
            "--set",
            "train.epochs=500",
            "--peer-timeout",
            "3",
            "--hostfile",
            &hosts,
            "--model-out",
            &model_out,
            "--metrics-out",
            &metrics_out,
        ]
    };
    // Process 0 logs every epoch at `info`: the first says training is on.
    let mut survivor = common::start(&args("0"), &[("TIDEMILL_LOG", "info")]);
    let victim = Reaped(common::start(&args("1"), &[]));
    let (lines, read) = mpsc::channel();
    let stderr = BufReader::new(survivor.stderr.take().unwrap());
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in stderr.lines().map_while(Result::ok) {
            let _ = lines.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let started = Instant::now();
    loop {
        match read.recv_timeout(Duration::from_secs(60)) {
            Ok(line) if line.contains("epoch done") => break,
            Ok(_) => {}
            Err(e) => panic!("no epoch finished within {:?}: {e}", started.elapsed()),
        }
    }
    kill(Pid::from_raw(victim.0.id() as i32), Signal::SIGSTOP).unwrap();
    let stopped_at = Instant::now();
    let out = common::finish(survivor, Duration::from_secs(60));
    let detected = stopped_at.elapsed();
    let stderr = reader.join().unwrap();
    drop(victim);
    assert_eq!(out.status.code(), Some(7), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "error: cluster: process 1 at {victim_address} stopped answering: nothing heard from it for"
        )),
        "{stderr}"
    );
    // At most one beat interval (0.75 s) passes between the victim's last
    // beat and the stop: the survivor cannot give up much before 3 s.
    assert!(
        detected > Duration::from_secs(2) && detected < Duration::from_secs(3 + 10),
        "detected {detected:?} after the stop, with --peer-timeout 3"
    );
    assert!(!model.exists(), "a failed cluster run wrote a model");
    assert!(!metrics.exists(), "a failed cluster run wrote metrics");
    assert_eq!(
        hidden_beside(dir.path(), "model.json"),
        Vec::<std::path::PathBuf>::new()
    );
}
