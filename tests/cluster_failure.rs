//! A process of a cluster dies: the others fail fast with a clear message
//! and exit code 7, and write nothing.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::root;

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
