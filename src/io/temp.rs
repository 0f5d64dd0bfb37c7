//! Temporary files beside an output, and the process-wide list of the live
//! ones.
//!
//! A temporary file is created exclusively (`O_CREAT | O_EXCL`, so a link or
//! file already at its name is never followed or truncated) under a random
//! name with a recognisable pattern, `.NAME.tidemill-XXXXXXXXXX.tmp`, with
//! the mode of any new file (`0666` less the umask). Its writer holds an
//! exclusive lock on it for as long as the file is open: locks die with the
//! process, so a later run can tell a temporary file left by a dead process
//! (see [`super::sweep`]) from one still being written.
//!
//! Every temporary file is listed while it lives. Dropping a [`TempFile`]
//! removes it; so does an interrupting signal ([`super::signals`]), which
//! removes every listed file before the process exits.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use rand::Rng;

/// What every temporary file name carries between the output's name and
/// the random part.
const MARK: &str = ".tidemill-";
/// The end of every temporary file name.
const SUFFIX: &str = ".tmp";
/// Random characters in a name (62^10 names per output).
const RANDOM_LEN: usize = 10;
/// The output's name is cut to at most this many bytes (on a character
/// boundary) in the temporary name, which keeps the whole name within the
/// 255 bytes (`NAME_MAX`) a file name may have: 100 + 25.
const BASE_LEN: usize = 100;
/// Names tried before giving up.
const ATTEMPTS: usize = 32;

/// True if `name` has the pattern of tidemill's temporary files,
/// `.NAME.tidemill-XXXXXXXXXX.tmp` with ten ASCII letters or digits.
pub fn is_temp_name(name: &OsStr) -> bool {
    let Some(rest) = name
        .to_str()
        .and_then(|n| n.strip_prefix('.'))
        .and_then(|n| n.strip_suffix(SUFFIX))
    else {
        return false;
    };
    match rest.rsplit_once(MARK) {
        Some((base, random)) => {
            !base.is_empty()
                && random.len() == RANDOM_LEN
                && random.bytes().all(|b| b.is_ascii_alphanumeric())
        }
        None => false,
    }
}

/// A fresh temporary name for an output called `target_name`.
fn temp_name(target_name: &OsStr) -> String {
    let name = target_name.to_string_lossy();
    let mut cut = name.len().min(BASE_LEN);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    let base = &name[..cut];
    let random: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(RANDOM_LEN)
        .map(char::from)
        .collect();
    format!(".{base}{MARK}{random}{SUFFIX}")
}

static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static COMMIT: Mutex<()> = Mutex::new(());

/// Held while outputs are renamed into place (or rolled back): a signal
/// handler waits for it, so a commit is never cut in half by a signal.
pub(crate) fn commit_window() -> MutexGuard<'static, ()> {
    COMMIT.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The list of live temporary files, held: while it is held no temporary
/// file is created or removed, and no signal handler removes any.
pub(crate) struct Live(MutexGuard<'static, Vec<PathBuf>>);

/// Takes the list of live temporary files, waiting for whoever holds it.
pub(crate) fn live() -> Live {
    Live(LIVE.lock().unwrap_or_else(PoisonError::into_inner))
}

impl Live {
    /// Lists `path`.
    pub(crate) fn insert(&mut self, path: PathBuf) {
        self.0.push(path);
    }

    /// Takes `path` off the list; false if it was not listed (it was
    /// removed or renamed into place already).
    pub(crate) fn forget(&mut self, path: &Path) -> bool {
        let before = self.0.len();
        self.0.retain(|p| p != path);
        self.0.len() != before
    }

    /// Removes `path` from the disk if it is listed, and takes it off the list.
    pub(crate) fn discard(&mut self, path: &Path) {
        if self.forget(path) {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Removes every listed file; returns how many were listed.
    pub(crate) fn discard_all(&mut self) -> usize {
        let n = self.0.len();
        for path in self.0.drain(..) {
            let _ = std::fs::remove_file(path);
        }
        n
    }
}

/// Removes every live temporary file of this process, for an exit that
/// skips destructors (a lost cluster peer). Returns how many there were, or
/// `None` if the list is busy (a thread, perhaps this one, is creating or
/// removing a temporary file), in which case nothing is removed.
pub fn discard_live() -> Option<usize> {
    let mut live = match LIVE.try_lock() {
        Ok(guard) => Live(guard),
        Err(std::sync::TryLockError::Poisoned(p)) => Live(p.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => return None,
    };
    Some(live.discard_all())
}

/// A temporary file beside an output: exclusively created, locked, listed;
/// removed when dropped unless it was renamed into place.
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
    file: File,
}

impl TempFile {
    /// Creates a temporary file in `dir` for an output named `target_name`.
    pub fn create(dir: &Path, target_name: &OsStr) -> io::Result<TempFile> {
        Self::create_from(
            dir,
            std::iter::repeat_with(|| temp_name(target_name)).take(ATTEMPTS),
        )
    }

    /// Tries `names` in `dir` in turn until one can be created and claimed.
    fn create_from(dir: &Path, names: impl Iterator<Item = String>) -> io::Result<TempFile> {
        let mut last = None;
        for name in names {
            let path = dir.join(name);
            let mut live = live();
            match open_exclusive(&path) {
                Ok(file) => match claim(&path, &file) {
                    Ok(true) => {
                        live.insert(path.clone());
                        return Ok(TempFile { path, file });
                    }
                    // A sweep took it between creation and lock: it removes
                    // it; try another name.
                    Ok(false) => {
                        last = Some(io::Error::new(
                            io::ErrorKind::AlreadyExists,
                            "temporary file taken by a concurrent sweep",
                        ))
                    }
                    Err(e) => {
                        let _ = std::fs::remove_file(&path);
                        return Err(e);
                    }
                },
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            io::Error::new(io::ErrorKind::AlreadyExists, "no free temporary file name")
        }))
    }

    /// Links a new temporary name in `dir` to the file at `existing`
    /// (which stays where it is), and locks it: a backup of a file about to
    /// be replaced, kept until the commit is over.
    pub fn hard_link(existing: &Path, dir: &Path) -> io::Result<TempFile> {
        let name = existing.file_name().unwrap_or(OsStr::new("out"));
        let mut last = None;
        for _ in 0..ATTEMPTS {
            let path = dir.join(temp_name(name));
            let mut live = live();
            // link(2) never follows or replaces what is at the new name.
            match std::fs::hard_link(existing, &path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    last = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            }
            live.insert(path.clone());
            let file = match OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(&path)
            {
                Ok(f) => f,
                Err(e) => {
                    live.discard(&path);
                    return Err(e);
                }
            };
            // Someone else may lock this inode (it is the output's); then the
            // backup goes unlocked for the few moments it lives.
            let _ = file.try_lock();
            return Ok(TempFile { path, file });
        }
        Err(last.unwrap_or_else(|| {
            io::Error::new(io::ErrorKind::AlreadyExists, "no free temporary file name")
        }))
    }

    /// Renames it to `dest` (replacing what is there); it is no longer a
    /// temporary file then, and dropping it leaves `dest` alone.
    pub fn rename_to(&self, dest: &Path) -> io::Result<()> {
        std::fs::rename(&self.path, dest)?;
        live().forget(&self.path);
        Ok(())
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The open file, for writing.
    pub fn file_mut(&mut self) -> &mut File {
        &mut self.file
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        live().discard(&self.path);
    }
}

/// Opens `path` for writing only if nothing (not even a dangling link) is
/// there yet.
pub(crate) fn open_exclusive(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Locks a freshly created file and checks that it is still the file at
/// `path` (a sweep in another process may have taken the lock and removed
/// it between creation and lock). Where the file system cannot lock, the
/// file is used unlocked (sweeps then leave it alone: see
/// [`super::sweep`]).
fn claim(path: &Path, file: &File) -> io::Result<bool> {
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return Ok(false),
        Err(TryLockError::Error(e)) => {
            tracing::debug!(path = %path.display(), error = %e, "temporary file left unlocked");
        }
    }
    let held = file.metadata()?;
    Ok(match std::fs::symlink_metadata(path) {
        Ok(now) => (now.dev(), now.ino()) == (held.dev(), held.ino()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn names_have_the_pattern() {
        let name = temp_name(OsStr::new("model.json"));
        assert!(name.starts_with(".model.json.tidemill-"), "{name}");
        assert!(is_temp_name(OsStr::new(&name)), "{name}");
        for other in [
            ".model.json.tmp-1234",
            "model.json",
            ".model.json.tidemill-abc.tmp",
            ".model.json.tidemill-abcdefghi!.tmp",
            "model.json.tidemill-abcdefghij.tmp",
            "..tidemill-abcdefghij.tmp",
        ] {
            assert!(!is_temp_name(OsStr::new(other)), "{other}");
        }
        let long = "x".repeat(250);
        assert!(temp_name(OsStr::new(&long)).len() < 255);
    }

    /// Regression: the output's name was cut to 100 characters, not bytes,
    /// so a long name in a script of 4-byte characters (or of bytes that
    /// are not UTF-8, each shown as a 3-byte U+FFFD) made a temporary name
    /// longer than the 255 bytes a file name may have.
    #[test]
    fn long_multibyte_names_fit_in_a_file_name() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let four = format!("{}.json", "\u{1d4c1}".repeat(60));
        let two = format!("{}.json", "\u{e9}".repeat(125));
        let mut raw = vec![0xffu8; 200];
        raw.extend(b".json");
        for name in [OsStr::new(&four), OsStr::new(&two), OsStr::from_bytes(&raw)] {
            assert!(name.len() <= 255);
            let temp = temp_name(name);
            assert!(temp.len() <= 255, "{} bytes", temp.len());
            assert!(is_temp_name(OsStr::new(&temp)), "{temp}");
            let t = TempFile::create(dir.path(), name).unwrap();
            drop(t);
            crate::io::atomic::write("--out", &dir.path().join(name), b"x").unwrap();
            assert_eq!(std::fs::read(dir.path().join(name)).unwrap(), b"x");
        }
    }

    #[test]
    fn creation_never_follows_or_truncates_what_is_at_the_name() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("link")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("nowhere"), dir.path().join("dangling"))
            .unwrap();
        std::fs::write(dir.path().join("plain"), b"keep me").unwrap();
        for taken in ["link", "dangling", "plain"] {
            let err =
                TempFile::create_from(dir.path(), [taken.to_string()].into_iter()).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{taken}");
        }
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(std::fs::read(dir.path().join("plain")).unwrap(), b"keep me");
        assert!(!dir.path().join("nowhere").exists());

        // A taken name is skipped for the next one.
        let names = ["link", "dangling", "fresh"].map(String::from).into_iter();
        let mut t = TempFile::create_from(dir.path(), names).unwrap();
        assert_eq!(t.path(), dir.path().join("fresh"));
        t.file_mut().write_all(b"new").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        drop(t);
        assert!(!dir.path().join("fresh").exists());
    }

    #[test]
    fn a_temp_file_is_locked_while_it_lives() {
        let dir = tempfile::tempdir().unwrap();
        let t = TempFile::create(dir.path(), OsStr::new("m.json")).unwrap();
        let other = File::open(t.path()).unwrap();
        assert!(matches!(other.try_lock(), Err(TryLockError::WouldBlock)));
        let path = t.path().to_path_buf();
        drop(t);
        assert!(!path.exists());
    }
}
