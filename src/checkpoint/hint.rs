//! What a failed job tells its user about resuming: the job's checkpoint
//! directory is registered once, and a failure message (a lost peer, a
//! peer that stopped answering) names the newest checkpoint there.

use std::path::PathBuf;
use std::sync::OnceLock;

use super::store::Store;

static DIR: OnceLock<PathBuf> = OnceLock::new();

/// Registers the job's checkpoint directory (the first call wins).
pub fn register(dir: PathBuf) {
    let _ = DIR.set(dir);
}

/// `"; the newest checkpoint is PATH: rerun with --resume to continue from
/// it"`, or `"; no checkpoint was written yet"` for a job that takes
/// checkpoints; empty for one that does not.
pub fn resume_hint() -> String {
    let Some(dir) = DIR.get() else {
        return String::new();
    };
    match Store::at(dir).list().ok().and_then(|l| l.last().copied()) {
        Some(seq) => format!(
            "; the newest checkpoint is {}: rerun with --resume to continue from it",
            Store::at(dir).path(seq).display()
        ),
        None => format!(
            "; no checkpoint was written to {} yet: a rerun starts from the beginning",
            dir.display()
        ),
    }
}
