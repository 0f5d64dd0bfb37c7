//! Real signals sent to a real `predict` in the middle of writing: SIGTERM
//! and SIGINT remove its temporary file and exit 128 + signal; SIGKILL
//! leaves it, and the next run in that directory sweeps it, while temporary
//! files of live processes (and files that only look like them) are left
//! alone.
//!
//! The child reads its input from stdin, which the test keeps open after
//! sending part of the rows: the child is then certainly mid-write when the
//! signal arrives.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;

use common::{hidden_beside, quickstart_model, root, wait_until};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A `predict` child writing `out` from rows it is still being sent.
struct Writing {
    child: Child,
    /// Gives the stdin back once the rows are sent, still open.
    feeder: JoinHandle<ChildStdin>,
}

impl Writing {
    fn start(model: &Path, out: &Path, copies: usize) -> Writing {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tidemill"))
            .current_dir(root())
            .env("TIDEMILL_LOG", "warn")
            .args(["predict", "-m"])
            .arg(model)
            .args(["-i", "-", "-o"])
            .arg(out)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let stream = common::ipc_stream("breast_cancer.parquet", copies);
        // All but the end-of-stream marker: the child waits for more rows.
        let body = stream[..stream.len() - 8].to_vec();
        let feeder = std::thread::spawn(move || {
            // A write fails (EPIPE) if the child is killed first.
            let _ = stdin.write_all(&body);
            stdin
        });
        Writing { child, feeder }
    }

    /// Sends `signal`, waits; returns the status and stderr.
    fn signal(self, signal: Signal) -> (ExitStatus, String) {
        kill(Pid::from_raw(self.child.id() as i32), signal).unwrap();
        let out = self.child.wait_with_output().unwrap();
        drop(self.feeder.join().unwrap());
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Sends the end of the stream and waits for a clean exit.
    fn finish(self) {
        let mut stdin = self.feeder.join().unwrap();
        // The end-of-stream marker: continuation, then a zero length.
        stdin
            .write_all(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0])
            .unwrap();
        drop(stdin);
        let out = self.child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn wait_for_temp(dir: &Path, name: &str, non_empty: bool) -> Vec<PathBuf> {
    wait_until(&format!("a temporary file beside {name}"), || {
        hidden_beside(dir, name)
            .iter()
            .any(|p| !non_empty || p.metadata().is_ok_and(|m| m.len() > 0))
    });
    hidden_beside(dir, name)
}

/// Regression (issue 8): SIGTERM and SIGINT during `predict` left a hidden
/// `.p.parquet.tmp-PID` behind.
fn interrupted(signal: Signal, out_name: &str, non_empty: bool, code: i32, label: &str) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = quickstart_model(d);
    let out = d.join(out_name);
    let writing = Writing::start(&model, &out, 50);
    wait_for_temp(d, out_name, non_empty);
    let (status, err) = writing.signal(signal);
    assert_eq!(status.code(), Some(code), "{status:?}: {err}");
    assert!(err.contains(label), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(hidden_beside(d, out_name).is_empty(), "temporary file left");
    assert!(!out.exists());
}

#[test]
fn sigterm_mid_write_removes_the_temporary_file() {
    // An IPC stream is written batch by batch: the file has bytes in it.
    interrupted(Signal::SIGTERM, "p.arrows", true, 143, "SIGTERM");
}

#[test]
fn sigint_mid_write_removes_the_temporary_file() {
    interrupted(Signal::SIGINT, "p.parquet", false, 130, "SIGINT");
}

/// True if this process ignores SIGHUP (started under `nohup`), which its
/// children inherit (Linux: bit 0 of `SigIgn` in /proc/self/status).
fn sighup_ignored() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .is_some_and(|m| m & 1 == 1)
}

#[test]
fn sighup_mid_write_removes_the_temporary_file_unless_ignored_at_start() {
    if !sighup_ignored() {
        // A closed terminal: exit 129 (128 + SIGHUP), as documented.
        interrupted(Signal::SIGHUP, "p.arrows", true, 129, "SIGHUP");
        return;
    }
    // Started under nohup: tidemill keeps ignoring SIGHUP, as documented,
    // and finishes its output.
    let dir = tempfile::tempdir().unwrap();
    let model = quickstart_model(dir.path());
    let out = dir.path().join("p.arrows");
    let writing = Writing::start(&model, &out, 50);
    wait_for_temp(dir.path(), "p.arrows", true);
    kill(Pid::from_raw(writing.child.id() as i32), Signal::SIGHUP).unwrap();
    writing.finish();
    assert!(out.exists());
}

/// SIGKILL cannot be caught: the temporary file stays, and the next run
/// that prepares an output in that directory removes it.
#[test]
fn sigkill_leaves_a_temporary_file_the_next_run_sweeps() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = quickstart_model(d);
    let writing = Writing::start(&model, &d.join("p.arrows"), 50);
    let left = wait_for_temp(d, "p.arrows", true);
    let (status, _) = writing.signal(Signal::SIGKILL);
    assert_eq!(status.code(), None, "killed by a signal");
    assert_eq!(
        hidden_beside(d, "p.arrows"),
        left,
        "SIGKILL removes nothing"
    );

    let next = d.join("q.parquet");
    let done = common::predict_breast_cancer(&model, &next, &[]);
    common::assert_success(&done, "the next predict");
    assert!(next.exists());
    assert!(
        hidden_beside(d, "p.arrows").is_empty(),
        "the dead process's temporary file was not swept"
    );
}

/// A sweep removes only what a dead tidemill left: not the temporary file
/// of a live process (another `predict`, mid-write), nor one whose lock
/// this test holds, nor a link or a file without the pattern.
#[test]
fn a_sweep_spares_live_temporary_files_and_foreign_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = quickstart_model(d);

    let stale = d.join(".old.json.tidemill-AAAAAAAAAA.tmp");
    std::fs::write(&stale, b"left by a dead process").unwrap();
    let held = d.join(".held.json.tidemill-BBBBBBBBBB.tmp");
    std::fs::write(&held, b"being written").unwrap();
    let lock = File::open(&held).unwrap();
    lock.try_lock().unwrap();
    let victim = d.join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let link = d.join(".link.json.tidemill-CCCCCCCCCC.tmp");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let foreign = [
        ".x.json.tmp-4242",
        ".notes.tmp",
        "notes.tidemill-DDDDDDDDDD.tmp",
    ];
    for f in foreign {
        std::fs::write(d.join(f), b"not tidemill's").unwrap();
    }

    let live = Writing::start(&model, &d.join("live.arrows"), 20);
    let live_temp = wait_for_temp(d, "live.arrows", true);

    let next = d.join("q.parquet");
    let done = common::predict_breast_cancer(&model, &next, &[]);
    common::assert_success(&done, "the next predict");
    assert!(!stale.exists(), "a stale temporary file was not swept");
    assert_eq!(hidden_beside(d, "live.arrows"), live_temp);
    assert!(held.exists());
    assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(foreign.iter().all(|f| d.join(f).exists()));

    // The live one completes untouched.
    live.finish();
    assert!(hidden_beside(d, "live.arrows").is_empty());
    let file = File::open(d.join("live.arrows")).unwrap();
    let rows: usize = arrow::ipc::reader::StreamReader::try_new(file, None)
        .unwrap()
        .map(|b| b.unwrap().num_rows())
        .sum();
    assert_eq!(rows, 20 * 569);
    drop(lock);
}
