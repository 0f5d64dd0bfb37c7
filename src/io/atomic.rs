//! Output sets: all the outputs of a command appear together, or none does.
//!
//! A command names its outputs up front. [`OutputSet::prepare`] resolves
//! them ([`super::target`]), rejects a file named twice (or an output that
//! is one of the command's inputs) as a usage error, and prepares each one
//! *before the work starts*, so that an unwritable path fails at once:
//!
//! * a regular file (or a new one) gets its directory created, stale
//!   temporary files there swept ([`super::sweep`]), and a temporary file
//!   beside it ([`super::temp`]);
//! * a device or FIFO is opened for writing (a FIFO waits for its reader,
//!   like a shell redirection);
//! * `-` is standard output, where the command allows it.
//!
//! The command then writes, and [`OutputSet::commit`] fsyncs the temporary
//! files and renames them into place one after the other, each over the
//! old file, which is kept under a temporary name (a hard link, or a copy
//! where links are not supported) until every rename has succeeded. If a
//! rename fails, the outputs already renamed are put back as they were
//! (the old file renamed back, or the new one removed if there was none)
//! and the error is returned. Dropping a set without committing removes
//! its temporary files.
//!
//! What is atomic: each file output on its own (readers see the old file or
//! the new one, never part of one), and the set against errors and
//! signals (SIGINT, SIGTERM and SIGHUP wait for a commit in progress). What
//! is not: a crash or SIGKILL *during* the commit, a window of a few
//! renames, can leave some outputs new and others old (the old versions
//! under temporary names, swept by the next run); and streamed outputs
//! (devices, FIFOs, stdout) receive their bytes as they are written, before
//! the file outputs are committed.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::sweep;
use super::target::{Kind, Target};
use super::temp::{self, TempFile};
use crate::error::{Error, Result};

/// One output a command asks for.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The flag or pipeline key that named it, for messages
    /// (`--model-out`, `output.metrics`).
    pub flag: &'a str,
    /// The path as given.
    pub path: &'a Path,
    /// Whether `-` means standard output (otherwise `-` is refused).
    pub stdout: bool,
}

impl<'a> Request<'a> {
    /// A file (or device, or FIFO) output.
    pub fn file(flag: &'a str, path: &'a Path) -> Self {
        Request {
            flag,
            path,
            stdout: false,
        }
    }

    /// An output that may also be `-` for standard output.
    pub fn file_or_stdout(flag: &'a str, path: &'a Path) -> Self {
        Request {
            flag,
            path,
            stdout: true,
        }
    }
}

/// An input of a command, with the flag or key that named it: no output
/// may replace it.
pub type Input<'a> = (&'a str, &'a Path);

/// Where an output's bytes go until it is committed.
#[derive(Debug)]
enum Sink {
    Stdout,
    Stream(File),
    Replace(TempFile),
}

/// One prepared output of an [`OutputSet`].
#[derive(Debug)]
pub struct Output {
    flag: String,
    target: Target,
    sink: Sink,
}

impl Output {
    fn open(flag: &str, target: Target, swept: &mut Vec<PathBuf>) -> Result<Output> {
        let fail = |action: String, e| output_error(flag, &target.given, action, e);
        let sink = match target.kind {
            Kind::Stdout => Sink::Stdout,
            Kind::Stream => Sink::Stream(
                OpenOptions::new()
                    .write(true)
                    .open(&target.resolved)
                    .map_err(|e| fail("cannot be opened for writing".into(), e))?,
            ),
            Kind::Replace => {
                let dir = target.dir();
                std::fs::create_dir_all(&dir).map_err(|e| {
                    fail(format!("cannot create the directory {}", dir.display()), e)
                })?;
                if !swept.contains(&dir) {
                    sweep::stale_temps(&dir);
                    swept.push(dir.clone());
                }
                let name = target.resolved.file_name().unwrap_or_default();
                Sink::Replace(TempFile::create(&dir, name).map_err(|e| {
                    fail(
                        format!("cannot create a temporary file in {}", dir.display()),
                        e,
                    )
                })?)
            }
        };
        Ok(Output {
            flag: flag.to_string(),
            target,
            sink,
        })
    }

    /// The flag or key that named this output.
    pub fn flag(&self) -> &str {
        &self.flag
    }

    /// The path as given.
    pub fn path(&self) -> &Path {
        &self.target.given
    }

    /// How it is written.
    pub fn kind(&self) -> Kind {
        self.target.kind
    }

    /// An [`Error::Output`] for this output.
    pub fn error(&self, action: impl Into<String>, source: io::Error) -> Error {
        output_error(&self.flag, &self.target.given, action.into(), source)
    }

    /// Writes all of `bytes`.
    pub fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        let done = match &mut self.sink {
            Sink::Stdout => io::stdout().write_all(bytes),
            Sink::Stream(f) => f.write_all(bytes),
            Sink::Replace(t) => t.file_mut().write_all(bytes),
        };
        done.map_err(|e| self.error("cannot be written", e))
    }

    /// A buffered writer into this output, for writers that want to own
    /// one (flush it before committing).
    pub fn writer(&self) -> Result<Box<dyn Write + Send>> {
        let file = match &self.sink {
            Sink::Stdout => return Ok(Box::new(io::stdout())),
            Sink::Stream(f) => f,
            Sink::Replace(t) => t.file(),
        };
        let file = file
            .try_clone()
            .map_err(|e| self.error("cannot be written", e))?;
        Ok(Box::new(io::BufWriter::new(file)))
    }

    /// Flushes what was written to where it goes (the disk, for files).
    fn finish(&mut self) -> Result<()> {
        match &mut self.sink {
            Sink::Stdout => io::stdout()
                .flush()
                .map_err(|e| self.error("cannot be written", e)),
            Sink::Stream(_) => Ok(()),
            Sink::Replace(t) => t
                .file()
                .sync_all()
                .map_err(|e| self.error("cannot be synced to disk", e)),
        }
    }

    /// Renames the temporary file over the target, keeping the old file (if
    /// any) as a backup; returns the backup.
    fn place(&self, temp: &TempFile) -> Result<Option<TempFile>> {
        let dest = &self.target.resolved;
        let backup = backup(dest, &self.target.dir())
            .map_err(|e| self.error("cannot keep the previous file during the commit", e))?;
        temp.rename_to(dest)
            .map_err(|e| self.error("cannot be renamed into place", e))?;
        Ok(backup)
    }

    /// Puts back what [`Output::place`] replaced.
    fn undo(&self, backup: Option<TempFile>) {
        let dest = &self.target.resolved;
        let undone = match &backup {
            Some(b) => b.rename_to(dest),
            None => std::fs::remove_file(dest),
        };
        if let Err(e) = undone {
            tracing::error!(path = %dest.display(), error = %e, "could not roll this output back");
        }
    }
}

/// A link to (or else a copy of) the file at `dest`, if there is one.
fn backup(dest: &Path, dir: &Path) -> io::Result<Option<TempFile>> {
    match std::fs::symlink_metadata(dest) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
        Ok(m) if m.is_dir() => return Ok(None), // the rename will say so
        Ok(_) => {}
    }
    match TempFile::hard_link(dest, dir) {
        Ok(t) => Ok(Some(t)),
        Err(e) => {
            tracing::debug!(path = %dest.display(), error = %e, "no hard link; copying");
            let name = dest.file_name().unwrap_or_default();
            let mut copy = TempFile::create(dir, name)?;
            io::copy(&mut File::open(dest)?, copy.file_mut())?;
            Ok(Some(copy))
        }
    }
}

fn output_error(flag: &str, path: &Path, action: String, source: io::Error) -> Error {
    Error::Output {
        flag: flag.to_string(),
        path: path.to_path_buf(),
        action,
        source,
    }
}

/// The outputs of one command, prepared together and committed together.
#[derive(Debug)]
pub struct OutputSet {
    outputs: Vec<Output>,
}

impl OutputSet {
    /// Resolves and prepares `requests` (in order): see the module docs.
    /// `inputs` are the command's input files with their flags, which no
    /// output may replace.
    ///
    /// Errors: [`Error::Usage`] for `-` where standard output is not
    /// allowed, [`Error::SamePath`] for a file named twice (exit code 2,
    /// checked before anything is created), [`Error::Output`] for an output
    /// that cannot be prepared (exit code 3).
    pub fn prepare(requests: &[Request<'_>], inputs: &[Input<'_>]) -> Result<OutputSet> {
        let targets = resolve_all(requests, inputs)?;
        let mut swept = Vec::new();
        let outputs = requests
            .iter()
            .zip(targets)
            .map(|(r, t)| Output::open(r.flag, t, &mut swept))
            .collect::<Result<Vec<_>>>()?;
        Ok(OutputSet { outputs })
    }

    /// The prepared outputs, in the order they were requested.
    pub fn outputs(&mut self) -> &mut [Output] {
        &mut self.outputs
    }

    /// Flushes and fsyncs every output, then renames the file outputs into
    /// place together, rolling back those already renamed if one fails.
    pub fn commit(mut self) -> Result<()> {
        for o in &mut self.outputs {
            o.finish()?;
        }
        let _window = temp::commit_window();
        let mut placed = Vec::new();
        for o in &self.outputs {
            let Sink::Replace(t) = &o.sink else { continue };
            match o.place(t) {
                Ok(backup) => placed.push((o, backup)),
                Err(e) => {
                    for (o, backup) in placed.into_iter().rev() {
                        o.undo(backup);
                    }
                    return Err(e);
                }
            }
        }
        let mut dirs: Vec<PathBuf> = placed.iter().map(|(o, _)| o.target.dir()).collect();
        dirs.sort();
        dirs.dedup();
        for dir in dirs {
            // The renames are done: a directory that cannot be synced is
            // worth a warning, not undoing them.
            if let Err(e) = File::open(&dir).and_then(|d| d.sync_all()) {
                tracing::warn!(dir = %dir.display(), error = %e, "could not sync the directory");
            }
        }
        Ok(())
    }
}

/// Resolves every request and input; refuses `-` where it is not allowed
/// and any file named twice (usage errors come before I/O errors). An input
/// that cannot be resolved is an error, not left out of the comparison (a
/// directory among them too: the caller expands directories into the files
/// it reads).
fn resolve_all(requests: &[Request<'_>], inputs: &[Input<'_>]) -> Result<Vec<Target>> {
    let mut resolved = Vec::new();
    for r in requests {
        if r.path.as_os_str() == "-" && !r.stdout {
            return Err(Error::Usage {
                option: r.flag.to_string(),
                message: "standard output ('-') is not an output here; name a file".into(),
            });
        }
        resolved.push(Target::resolve(r.path));
    }
    let mut unresolved = None;
    let inputs: Vec<(&str, Target)> = inputs
        .iter()
        .filter(|(_, p)| p.as_os_str() != "-")
        .filter_map(|(flag, p)| match Target::resolve_input(p) {
            Ok(t) => Some((*flag, t)),
            Err(e) => {
                unresolved.get_or_insert_with(|| Error::io(p, e));
                None
            }
        })
        .collect();
    for (i, (r, a)) in requests.iter().zip(&resolved).enumerate() {
        let Ok(a) = a else { continue };
        let earlier = requests[..i]
            .iter()
            .zip(&resolved)
            .filter_map(|(q, b)| Some((q.flag, b.as_ref().ok()?)));
        let inputs = inputs.iter().map(|(flag, t)| (*flag, t));
        if let Some((flag, _)) = earlier.chain(inputs).find(|(_, b)| a.same_file(b)) {
            return Err(Error::SamePath {
                first: flag.to_string(),
                second: r.flag.to_string(),
                path: a.given.clone(),
            });
        }
    }
    if let Some(e) = unresolved {
        return Err(e);
    }
    requests
        .iter()
        .zip(resolved)
        .map(|(r, t)| t.map_err(|e| output_error(r.flag, r.path, "cannot be written".into(), e)))
        .collect()
}

/// Checks that every output in `requests` could be written, without
/// writing it: resolves them (refusing a file named twice, or one of the
/// `inputs`, as [`OutputSet::prepare`] does), creates and
/// removes a temporary file where each file output would go (in the
/// nearest directory that exists, if its own does not yet), and opens
/// devices for writing. FIFOs are not opened (that waits for a reader).
pub fn check_writable(requests: &[Request<'_>], inputs: &[Input<'_>]) -> Result<()> {
    let targets = resolve_all(requests, inputs)?;
    for (r, t) in requests.iter().zip(&targets) {
        let fail = |action: String, e| output_error(r.flag, r.path, action, e);
        match t.kind {
            Kind::Stdout => {}
            Kind::Stream if t.is_fifo() => {}
            Kind::Stream => {
                OpenOptions::new()
                    .write(true)
                    .open(&t.resolved)
                    .map_err(|e| fail("cannot be opened for writing".into(), e))?;
            }
            Kind::Replace => {
                let mut dir = t.dir();
                while !dir.is_dir() {
                    dir = match dir.parent() {
                        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                        _ => PathBuf::from("."),
                    };
                }
                let name = t.resolved.file_name().unwrap_or_default();
                TempFile::create(&dir, name)
                    .map_err(|e| fail(format!("cannot create a file in {}", dir.display()), e))?;
            }
        }
    }
    Ok(())
}

/// Writes `bytes` to the output `path` (named by `flag`) as a set of one.
pub fn write(flag: &str, path: &Path, bytes: &[u8]) -> Result<()> {
    let mut set = OutputSet::prepare(&[Request::file(flag, path)], &[])?;
    for o in set.outputs() {
        o.write_all(bytes)?;
    }
    set.commit()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, FileTypeExt};

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn uncommitted_sets_vanish() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("m.json");
        {
            let mut set = OutputSet::prepare(&[Request::file("--m", &target)], &[]).unwrap();
            set.outputs()[0].write_all(b"partial").unwrap();
            assert_eq!(
                entries(dir.path()).len(),
                1,
                "a temporary file while it lives"
            );
        }
        assert!(!target.exists());
        assert!(entries(dir.path()).is_empty());
        write("--m", &target, b"whole").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"whole");
        assert_eq!(entries(dir.path()), ["m.json"]);
    }

    #[test]
    fn a_failed_rename_rolls_the_set_back() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (a, b, c) = (d.join("a.json"), d.join("b.json"), d.join("c.json"));
        std::fs::write(&a, b"old a").unwrap();
        let mut set = OutputSet::prepare(
            &[
                Request::file("--a", &a),
                Request::file("--b", &b),
                Request::file("--c", &c),
            ],
            &[],
        )
        .unwrap();
        for (o, text) in set.outputs().iter_mut().zip(["new a", "new b", "new c"]) {
            o.write_all(text.as_bytes()).unwrap();
        }
        // c turns into a directory after preparation: its rename fails.
        std::fs::create_dir(&c).unwrap();
        std::fs::write(c.join("inside"), b"x").unwrap();
        let err = set.commit().unwrap_err();
        assert!(err.to_string().contains("--c"), "{err}");
        assert_eq!(err.exit_code(), 3);
        assert_eq!(std::fs::read(&a).unwrap(), b"old a");
        assert!(!b.exists());
        assert!(c.join("inside").exists());
        assert_eq!(entries(d), ["a.json", "c.json"]);
    }

    #[test]
    fn links_are_written_through_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("real")).unwrap();
        std::fs::write(d.join("real/m.json"), b"old").unwrap();
        symlink("real/m.json", d.join("link")).unwrap();
        symlink("real/new.json", d.join("dangling")).unwrap();
        write("--m", &d.join("link"), b"new").unwrap();
        write("--m", &d.join("dangling"), b"fresh").unwrap();
        assert!(d
            .join("link")
            .symlink_metadata()
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(d.join("real/m.json")).unwrap(), b"new");
        assert_eq!(std::fs::read(d.join("real/new.json")).unwrap(), b"fresh");
        assert_eq!(entries(&d.join("real")), ["m.json", "new.json"]);
    }

    #[test]
    fn devices_are_streamed_not_replaced() {
        write("--m", Path::new("/dev/null"), b"gone").unwrap();
        let ft = std::fs::metadata("/dev/null").unwrap().file_type();
        assert!(ft.is_char_device());
    }

    #[test]
    fn a_path_named_twice_is_a_usage_error() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("in.parquet"), b"x").unwrap();
        symlink(d.join("m.json"), d.join("link")).unwrap();
        let m = d.join("m.json");
        let link = d.join("link");
        let input = d.join("in.parquet");
        let cases: [(&[Request<'_>], &[Input<'_>]); 3] = [
            (&[Request::file("--a", &m), Request::file("--b", &m)], &[]),
            (
                &[Request::file("--a", &m), Request::file("--b", &link)],
                &[],
            ),
            (&[Request::file("--out", &input)], &[("--input", &input)]),
        ];
        for (requests, inputs) in cases {
            let err = OutputSet::prepare(requests, inputs).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{err}");
        }
        assert_eq!(entries(d), ["in.parquet", "link"]);
        let err = OutputSet::prepare(&[Request::file("--a", Path::new("-"))], &[]).unwrap_err();
        assert_eq!(err.exit_code(), 2, "{err}");
    }

    /// Regression: an input that could not be resolved was left out of the
    /// comparison without a word (a directory among them: the files in it
    /// went unprotected). Now it is an error, before anything is created.
    #[test]
    fn an_input_that_cannot_be_resolved_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        symlink("loop", d.join("loop")).unwrap();
        std::fs::create_dir(d.join("data")).unwrap();
        let out = d.join("m.json");
        for input in [d.join("loop"), d.join("data")] {
            let inputs: &[Input<'_>] = &[("--input", &input)];
            let err = OutputSet::prepare(&[Request::file("--out", &out)], inputs).unwrap_err();
            assert_eq!(err.exit_code(), 3, "{err}");
            assert!(err.to_string().contains(&*input.to_string_lossy()), "{err}");
        }
        assert_eq!(entries(d), ["data", "loop"]);
    }

    #[test]
    fn check_writable_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let deep = d.join("a/b/m.json");
        check_writable(&[Request::file("output.model", &deep)], &[]).unwrap();
        assert!(entries(d).is_empty());
        std::fs::write(d.join("file"), b"x").unwrap();
        let under = d.join("file/m.json");
        let err = check_writable(&[Request::file("output.metrics", &under)], &[]).unwrap_err();
        assert_eq!(err.exit_code(), 3);
        assert!(err.to_string().contains("output.metrics"), "{err}");
    }
}
