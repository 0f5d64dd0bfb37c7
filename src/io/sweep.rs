//! Removing the temporary files that dead processes left behind.
//!
//! SIGKILL, a crash or a power cut leave a temporary file nobody removes.
//! When tidemill prepares an output in a directory it sweeps that
//! directory: a file whose name has the temporary pattern
//! ([`super::temp::is_temp_name`]), that is a regular file (never a link,
//! directory or FIFO), and whose lock can be taken is stale: its writer is
//! gone, since a writer holds the lock for as long as it lives and the
//! kernel drops the lock when the process dies. Process ids are not
//! consulted (they are reused, and they say nothing across machines sharing
//! a file system). A file whose lock cannot be taken, or whose lock state
//! cannot be told (a file system without locks), is left alone.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use super::temp::is_temp_name;

/// Removes the stale temporary files in `dir`; returns how many. Problems
/// (an unreadable directory, a file that went away) are logged and skipped:
/// a sweep is housekeeping, and preparing the output reports what matters.
pub fn stale_temps(dir: &Path) -> usize {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::debug!(dir = %dir.display(), error = %e, "not swept");
            return 0;
        }
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        if !is_temp_name(&entry.file_name()) {
            continue;
        }
        let path = entry.path();
        match remove_if_stale(&path) {
            Ok(true) => {
                removed += 1;
                tracing::info!(path = %path.display(), "removed a temporary file left by a dead process");
            }
            Ok(false) => {}
            Err(e) => tracing::debug!(path = %path.display(), error = %e, "not swept"),
        }
    }
    removed
}

/// Removes `path` if it is a regular file nobody holds the lock of.
fn remove_if_stale(path: &Path) -> io::Result<bool> {
    let seen = std::fs::symlink_metadata(path)?;
    if !seen.file_type().is_file() {
        return Ok(false);
    }
    // O_NOFOLLOW: a link swapped in since the look is not followed;
    // O_NONBLOCK: nor does a FIFO swapped in block the open.
    let file: File = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let held = file.metadata()?;
    if (held.dev(), held.ino()) != (seen.dev(), seen.ino()) {
        return Ok(false);
    }
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return Ok(false),
        Err(TryLockError::Error(e)) => return Err(e),
    }
    // Still the file we locked (not renamed away and replaced meanwhile)?
    let now = std::fs::symlink_metadata(path)?;
    if (now.dev(), now.ino()) != (held.dev(), held.ino()) {
        return Ok(false);
    }
    std::fs::remove_file(path)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::temp::TempFile;
    use std::ffi::OsStr;

    #[test]
    fn only_unlocked_regular_files_with_the_pattern_go() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let stale = d.join(".m.json.tidemill-AAAAAAAAAA.tmp");
        std::fs::write(&stale, b"left by a dead process").unwrap();
        let held = d.join(".m.json.tidemill-BBBBBBBBBB.tmp");
        std::fs::write(&held, b"being written").unwrap();
        let lock = File::open(&held).unwrap();
        lock.try_lock().unwrap();
        let live = TempFile::create(d, OsStr::new("x.parquet")).unwrap();
        let victim = d.join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let link = d.join(".v.tidemill-CCCCCCCCCC.tmp");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let subdir = d.join(".s.tidemill-DDDDDDDDDD.tmp");
        std::fs::create_dir(&subdir).unwrap();
        let others = [".m.json.tmp-4242", "notes.tmp", "m.json"].map(|n| d.join(n));
        for o in &others {
            std::fs::write(o, b"not ours").unwrap();
        }

        assert_eq!(stale_temps(d), 1);
        assert!(!stale.exists());
        assert!(held.exists() && live.path().exists());
        assert!(link.symlink_metadata().is_ok() && subdir.is_dir());
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(others.iter().all(|o| o.exists()));

        drop(lock);
        assert_eq!(stale_temps(d), 1);
        assert!(!held.exists() && live.path().exists());
    }
}
