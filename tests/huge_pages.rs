//! Transparent huge pages in a real `train` process: turned off where the
//! model is small (its memory is then the rows it caches and the batches
//! it decodes, read in order, and huge pages only raise its peak), kept for
//! a hashed model of 2^20 slots or more, whose state is written at
//! scattered slots (docs/benchmarks.md, "Memory of the CLI").

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::time::Duration;

use common::{finish, sigterm, start, thp_enabled, wait_for_a_checkpoint};

/// A child killed if the test fails before it is stopped.
struct Running(Option<std::process::Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn a_small_model_trains_without_huge_pages() {
    // Huge pages must be on to begin with (a kernel without them, or a
    // runner that turned them off for its children, has nothing to show).
    // (`THP_enabled` is the process's PR_SET_THP_DISABLE flag, which
    // children inherit; a process that starts with it set keeps it.)
    if thp_enabled(std::process::id()).as_deref() != Some("1") {
        eprintln!("skipped: this process was started with transparent huge pages disabled");
        return;
    }
    for (bits, want) in [("12", "0"), ("20", "1")] {
        let dir = tempfile::tempdir().unwrap();
        let checkpoints = dir.path().join("checkpoints");
        let checkpoint = format!("output.checkpoint={:?}", checkpoints.to_str().unwrap());
        let hash_bits = format!("data.hash_bits={bits}");
        let mut child = Running(Some(start(
            &[
                "train",
                "pipelines/adult.toml",
                "--set",
                &hash_bits,
                "--set",
                "train.epochs=100000",
                "--set",
                &checkpoint,
                "--model-out",
                dir.path().join("model.json").to_str().unwrap(),
            ],
            &[],
        )));
        wait_for_a_checkpoint(&checkpoints);
        let child = child.0.take().unwrap();
        let thp = thp_enabled(child.id());
        sigterm(&child);
        finish(child, Duration::from_secs(60));
        assert_eq!(thp.as_deref(), Some(want), "data.hash_bits = {bits}");
    }
}
