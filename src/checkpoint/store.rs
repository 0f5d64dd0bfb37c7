//! A directory of numbered checkpoints, written atomically and read back
//! only when whole.
//!
//! Checkpoint `n` is `checkpoint-NNNNNNNNNNNN.tmck` (`n` zero-padded to 12
//! digits). It is written to a temporary file beside it ([`crate::io::temp`]:
//! removed on error or on an interrupting signal, swept by the next run if
//! the process was killed), fsynced, renamed into place and the directory
//! fsynced: after a crash a checkpoint is there whole, or not at all.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::format::{self, Invalid};
use super::retention;
use crate::error::{Error, Result};
use crate::io::{sweep, temp::TempFile};

const PREFIX: &str = "checkpoint-";
const SUFFIX: &str = ".tmck";

/// A checkpoint read back whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// Its sequence number.
    pub seq: u64,
    /// Its file.
    pub path: PathBuf,
    /// What was saved.
    pub payload: Vec<u8>,
    /// Newer checkpoints that were skipped, and why.
    pub skipped: Vec<(PathBuf, Invalid)>,
}

/// The checkpoints of one job, in one directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

/// The sequence number a file name stands for, if it is a checkpoint's.
fn seq_of(name: &OsStr) -> Option<u64> {
    let digits = name.to_str()?.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    (digits.len() == 12 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

impl Store {
    /// Opens the directory `dir`, creating it if needed, and removes the
    /// temporary files a killed writer left there.
    pub fn open(dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        sweep::stale_temps(dir);
        Ok(Store {
            dir: dir.to_path_buf(),
        })
    }

    /// The store in `dir` as it is: nothing is created or swept (for
    /// reading only, e.g. to name the newest checkpoint in a message).
    pub fn at(dir: &Path) -> Store {
        Store {
            dir: dir.to_path_buf(),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of checkpoint `seq`.
    pub fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{PREFIX}{seq:012}{SUFFIX}"))
    }

    /// Writes checkpoint `seq` holding `payload` (replacing one of that
    /// number) and returns its file.
    pub fn write(&self, seq: u64, payload: &[u8]) -> Result<PathBuf> {
        let path = self.path(seq);
        let name = path.file_name().unwrap_or(OsStr::new("checkpoint"));
        let mut temp = TempFile::create(&self.dir, name).map_err(|e| Error::io(&self.dir, e))?;
        let fail = |e| Error::io(&path, e);
        temp.file_mut()
            .write_all(&format::encode(payload))
            .map_err(fail)?;
        temp.file().sync_all().map_err(fail)?;
        temp.rename_to(&path).map_err(fail)?;
        // The rename is durable once the directory is.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(&self.dir, e))?;
        Ok(path)
    }

    /// The sequence numbers of the checkpoints present, increasing.
    pub fn list(&self) -> Result<Vec<u64>> {
        let entries = std::fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        let mut seqs = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&self.dir, e))?;
            if let Some(seq) = seq_of(&entry.file_name()) {
                seqs.push(seq);
            }
        }
        seqs.sort_unstable();
        Ok(seqs)
    }

    /// The newest checkpoint that is whole, if any. A newer one that is
    /// not (cut short by a full disk, a flipped bit, another format
    /// version) is skipped with a warning naming it and what is wrong, and
    /// listed in [`Loaded::skipped`]. An unreadable file is an error.
    pub fn newest(&self) -> Result<Option<Loaded>> {
        let mut skipped = Vec::new();
        for seq in self.list()?.into_iter().rev() {
            let path = self.path(seq);
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                // Removed since it was listed (a concurrent prune): older ones remain.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(&path, e)),
            };
            match format::decode(&bytes) {
                Ok(payload) => {
                    return Ok(Some(Loaded {
                        seq,
                        payload: payload.to_vec(),
                        path,
                        skipped,
                    }))
                }
                Err(why) => {
                    tracing::warn!(checkpoint = %path.display(), "skipping checkpoint: {why}");
                    skipped.push((path, why));
                }
            }
        }
        Ok(None)
    }

    /// Deletes the checkpoints the retention policy expires, keeping the
    /// newest `keep` (at least one); returns the deleted sequence numbers.
    pub fn prune(&self, keep: usize) -> Result<Vec<u64>> {
        let expired = retention::expired(&self.list()?, keep);
        for &seq in &expired {
            let path = self.path(seq);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(&path, e)),
            }
        }
        Ok(expired)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_numbered_and_nothing_else_counts() {
        assert_eq!(seq_of(OsStr::new("checkpoint-000000000042.tmck")), Some(42));
        for other in [
            "checkpoint-42.tmck",
            "checkpoint-00000000004x.tmck",
            ".checkpoint-000000000042.tmck.tidemill-abcdefghij.tmp",
            "model.json",
        ] {
            assert_eq!(seq_of(OsStr::new(other)), None, "{other}");
        }
    }

    #[test]
    fn the_newest_whole_checkpoint_is_read_and_broken_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("ckpt")).unwrap();
        assert_eq!(store.newest().unwrap(), None);
        for seq in 1..=4 {
            store.write(seq, format!("state {seq}").as_bytes()).unwrap();
        }
        std::fs::write(dir.path().join("ckpt/notes.txt"), "not a checkpoint").unwrap();
        assert_eq!(store.list().unwrap(), [1, 2, 3, 4]);
        let got = store.newest().unwrap().unwrap();
        assert_eq!((got.seq, &got.payload[..]), (4, &b"state 4"[..]));
        assert!(got.skipped.is_empty());

        // 4 cut short (a full disk), 3 with a flipped bit: 2 is used, and
        // both are named with what is wrong.
        let p4 = store.path(4);
        let bytes = std::fs::read(&p4).unwrap();
        std::fs::write(&p4, &bytes[..bytes.len() - 3]).unwrap();
        let p3 = store.path(3);
        let mut bytes = std::fs::read(&p3).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x10;
        std::fs::write(&p3, bytes).unwrap();
        let got = store.newest().unwrap().unwrap();
        assert_eq!((got.seq, &got.payload[..]), (2, &b"state 2"[..]));
        assert_eq!(got.skipped.len(), 2);
        assert_eq!(got.skipped[0].0, p4);
        assert!(matches!(got.skipped[0].1, Invalid::Truncated { .. }));
        assert_eq!(got.skipped[1], (p3, Invalid::Digest));
    }

    #[test]
    fn a_rewrite_replaces_and_pruning_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for seq in [3, 1, 2, 5] {
            store.write(seq, b"old").unwrap();
        }
        store.write(5, b"new").unwrap();
        assert_eq!(store.newest().unwrap().unwrap().payload, b"new");
        assert_eq!(store.prune(2).unwrap(), [1, 2]);
        assert_eq!(store.list().unwrap(), [3, 5]);
        // No temporary file is left behind by the writes.
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn a_temporary_file_left_by_a_killed_writer_is_swept_and_never_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.write(1, b"whole").unwrap();
        // What a writer killed mid-write leaves: a temporary name, unlocked.
        let stale = dir
            .path()
            .join(".checkpoint-000000000002.tmck.tidemill-abcdefghij.tmp");
        std::fs::write(&stale, b"TIDEMILL-CHECKPOINT\n\x01").unwrap();
        assert_eq!(store.newest().unwrap().unwrap().seq, 1);
        Store::open(dir.path()).unwrap();
        assert!(!stale.exists(), "swept when the store is opened again");
    }
}
