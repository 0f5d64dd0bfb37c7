//! An exclusive lock on a directory that one run writes (`DIR/.lock`,
//! an advisory `flock`, released when the file is dropped or the process
//! ends, however it ends).

use std::fs::File;
use std::path::Path;

use crate::error::{Error, Result};

/// Locks `dir` (created if need be) for this run. `option` names the
/// setting that chose the directory, for the message when another run
/// holds it (exit 2).
pub fn lock(dir: &Path, option: &str) -> Result<File> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let path = dir.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Usage {
            option: option.into(),
            message: format!(
                "another run is using {} (it holds {}): stop it or wait for it, or use another directory",
                dir.display(),
                path.display()
            ),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io(&path, e)),
    }
}
