//! The binary's allocator options in a real process: `tidemill` runs with
//! mimalloc's purge delay at 300 ms (it sets `MIMALLOC_PURGE_DELAY` and
//! executes itself again, keeping its process id), and leaves a value the
//! user set alone (docs/benchmarks.md, "Which allocator").

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::time::Duration;

use common::{finish, sigterm, start, wait_for_a_checkpoint};

/// `MIMALLOC_PURGE_DELAY` in the environment process `pid` runs with.
fn purge_delay(pid: u32) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    environ
        .split(|&b| b == 0)
        .find_map(|v| v.strip_prefix(b"MIMALLOC_PURGE_DELAY="))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// A training job that runs until it is stopped, started with `envs`.
fn long_job(dir: &std::path::Path, envs: &[(&str, &str)]) -> std::process::Child {
    let checkpoint = format!(
        "output.checkpoint={:?}",
        dir.join("checkpoints").to_str().unwrap()
    );
    start(
        &[
            "train",
            "pipelines/adult.toml",
            "--set",
            "train.epochs=100000",
            "--set",
            &checkpoint,
            "--model-out",
            dir.join("model.json").to_str().unwrap(),
        ],
        envs,
    )
}

#[test]
fn the_binary_runs_with_a_short_purge_delay_unless_one_is_set() {
    if std::env::var_os("LD_PRELOAD").is_some()
        || std::env::var_os("MIMALLOC_PURGE_DELAY").is_some()
    {
        eprintln!("skipped: LD_PRELOAD or MIMALLOC_PURGE_DELAY is set for the tests (the binary then runs as it is)");
        return;
    }
    for (set, want) in [(None, "300"), (Some("7"), "7")] {
        let dir = tempfile::tempdir().unwrap();
        let envs: Vec<(&str, &str)> = set
            .map(|v| ("MIMALLOC_PURGE_DELAY", v))
            .into_iter()
            .collect();
        let child = long_job(dir.path(), &envs);
        let pid = child.id();
        wait_for_a_checkpoint(&dir.path().join("checkpoints"));
        let seen = purge_delay(pid);
        // Executed again by its own path, the process keeps its name.
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
        sigterm(&child);
        let out = finish(child, Duration::from_secs(60));
        assert_eq!(seen.as_deref(), Some(want), "set by the caller: {set:?}");
        assert_eq!(name.trim(), "tidemill");
        // Stopped by the signal, as a job without the new image would be:
        // the process that ran is the one that was started.
        assert_eq!(
            out.status.code(),
            Some(143),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
