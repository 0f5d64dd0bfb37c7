//! What an output path names, decided before anything is written.
//!
//! * `-`: standard output, where the command allows it.
//! * A regular file, or nothing yet: written to a temporary file beside it
//!   and renamed into place ([`Kind::Replace`]).
//! * A symbolic link: followed to the file it finally names, which is then
//!   handled as above; the link itself is kept (write-through). A dangling
//!   link is followed to where its target would be. A link in a sticky,
//!   world-writable directory (like `/tmp`) is followed only if it is owned
//!   by the user running tidemill or by the directory's owner: the rule the
//!   kernel applies to a shell's `>` under `fs.protected_symlinks`, applied
//!   here whatever that setting (see [`may_follow`]).
//! * A character or block device, a FIFO or a socket: opened and written in
//!   place ([`Kind::Stream`]); renaming over `/dev/null` or a FIFO would
//!   replace it with a regular file.
//! * A directory: an error.

use std::fs::Metadata;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

/// Links followed before giving up (as the kernel's `ELOOP` limit).
const MAX_LINKS: usize = 40;

/// How an output is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `-`: standard output.
    Stdout,
    /// A regular file (or none yet): temporary file, fsync, rename, fsync
    /// of the directory.
    Replace,
    /// A device, FIFO or socket: opened for writing and streamed into.
    Stream,
}

/// A resolved output (or input) path.
#[derive(Debug, Clone)]
pub struct Target {
    /// The path as given, for messages.
    pub given: PathBuf,
    /// The path written: `given` with every symbolic link followed.
    pub resolved: PathBuf,
    /// How it is written.
    pub kind: Kind,
    /// Whether something is at `resolved` now, and what.
    meta: Option<Metadata>,
    /// `resolved` as the kernel will resolve it (see [`canonical`]), for
    /// comparisons.
    canonical: PathBuf,
}

impl Target {
    /// Resolves the output path `given` (`-` is standard output). A link
    /// that [`may_follow`] refuses is an error (`PermissionDenied`).
    pub fn resolve(given: &Path) -> io::Result<Target> {
        Self::resolve_links(given, true)
    }

    /// Resolves the input path `given`, to compare it with outputs: as
    /// [`Target::resolve`], but every link is followed (reading through a
    /// link destroys nothing).
    pub fn resolve_input(given: &Path) -> io::Result<Target> {
        Self::resolve_links(given, false)
    }

    fn resolve_links(given: &Path, protected: bool) -> io::Result<Target> {
        if given.as_os_str() == "-" {
            return Ok(Target {
                given: given.to_path_buf(),
                resolved: given.to_path_buf(),
                kind: Kind::Stdout,
                meta: None,
                canonical: given.to_path_buf(),
            });
        }
        let (resolved, meta) = follow_links(given, protected)?;
        let kind = match &meta {
            None => Kind::Replace,
            Some(m) if m.is_file() => Kind::Replace,
            Some(m) if m.is_dir() => {
                return Err(io::Error::new(
                    io::ErrorKind::IsADirectory,
                    "is a directory",
                ))
            }
            Some(_) => Kind::Stream,
        };
        if kind == Kind::Replace && resolved.file_name().is_none() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "names no file"));
        }
        let canonical = canonical(&resolved);
        Ok(Target {
            given: given.to_path_buf(),
            resolved,
            kind,
            meta,
            canonical,
        })
    }

    /// The directory the temporary file goes in (for [`Kind::Replace`]).
    pub fn dir(&self) -> PathBuf {
        match self.resolved.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    /// True for a FIFO (opening one for writing waits for a reader).
    pub fn is_fifo(&self) -> bool {
        self.meta.as_ref().is_some_and(|m| m.file_type().is_fifo())
    }

    fn is_char_device(&self) -> bool {
        self.meta
            .as_ref()
            .is_some_and(|m| m.file_type().is_char_device())
    }

    /// True if writing one would overwrite the other: the same file after
    /// following links and making directories canonical, or the same inode
    /// (a hard link). Standard output is never the same file as anything,
    /// and two character devices (`/dev/null` twice) may both be written.
    pub fn same_file(&self, other: &Target) -> bool {
        if self.kind == Kind::Stdout || other.kind == Kind::Stdout {
            return false;
        }
        if self.is_char_device() && other.is_char_device() {
            return false;
        }
        if self.canonical == other.canonical {
            return true;
        }
        match (&self.meta, &other.meta) {
            (Some(a), Some(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
            _ => false,
        }
    }
}

/// Follows symbolic links from `path` until something that is not a link,
/// or nothing, is found; returns that path and what is there. With
/// `protected`, a link [`may_follow`] refuses is an error.
fn follow_links(path: &Path, protected: bool) -> io::Result<(PathBuf, Option<Metadata>)> {
    let mut path = path.to_path_buf();
    for _ in 0..MAX_LINKS {
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((path, None)),
            Err(e) => return Err(e),
        };
        if !meta.file_type().is_symlink() {
            return Ok((path, Some(meta)));
        }
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if protected {
            let d = std::fs::metadata(dir)?;
            let me = nix::unistd::geteuid().as_raw();
            if !may_follow(meta.uid(), d.mode(), d.uid(), me) {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "{} is a symbolic link owned by uid {}, in the sticky, world-writable \
                         directory {} owned by uid {}: not followed, as the kernel's \
                         fs.protected_symlinks refuses to (it may be another user's trap); \
                         name the file it points to if that is the one meant",
                        path.display(),
                        meta.uid(),
                        dir.display(),
                        d.uid(),
                    ),
                ));
            }
        }
        let next = std::fs::read_link(&path)?;
        path = if next.is_relative() {
            dir.join(next)
        } else {
            next
        };
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("more than {MAX_LINKS} levels of symbolic links"),
    ))
}

/// Whether a symbolic link owned by `link_uid`, in a directory with mode
/// `dir_mode` owned by `dir_uid`, may be followed by the user `me`: the
/// kernel's `fs.protected_symlinks` rule (`may_follow_link` in
/// `fs/namei.c`). In a sticky, world-writable directory anyone can plant a
/// link, so only the user's own links and the directory owner's are
/// followed; elsewhere, every link.
pub fn may_follow(link_uid: u32, dir_mode: u32, dir_uid: u32, me: u32) -> bool {
    const STICKY_AND_WORLD_WRITABLE: u32 = 0o1002;
    link_uid == me
        || dir_mode & STICKY_AND_WORLD_WRITABLE != STICKY_AND_WORLD_WRITABLE
        || link_uid == dir_uid
}

/// `path` as the kernel will resolve it once the missing directories
/// above it are created: absolute, every link in the part that exists
/// followed, and `..` taken lexically only where it follows a directory
/// that does not exist yet (such a directory holds no links, and its `..`
/// is the directory it will be made in). Going back up into the part
/// that exists, `..` is the physical parent, as the kernel's.
fn canonical(path: &Path) -> PathBuf {
    let Ok(absolute) = std::path::absolute(path) else {
        return path.to_path_buf();
    };
    let mut out = PathBuf::new();
    // Whether `out` is made canonical as far as it goes (all of it exists).
    let mut exists = true;
    for part in absolute.components() {
        match part {
            Component::Prefix(_) | Component::RootDir => out.push(part),
            Component::CurDir => {}
            // `out` is canonical, or canonical below a missing part: its
            // lexical parent is the kernel's `..` either way.
            Component::ParentDir => {
                out.pop();
                exists = exists || out.exists();
            }
            Component::Normal(name) => {
                out.push(name);
                if exists {
                    match std::fs::canonicalize(&out) {
                        Ok(c) => out = c,
                        Err(_) => exists = false,
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn kinds() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert_eq!(Target::resolve(Path::new("-")).unwrap().kind, Kind::Stdout);
        assert_eq!(
            Target::resolve(&d.join("new.json")).unwrap().kind,
            Kind::Replace
        );
        std::fs::write(d.join("old.json"), b"x").unwrap();
        assert_eq!(
            Target::resolve(&d.join("old.json")).unwrap().kind,
            Kind::Replace
        );
        assert_eq!(
            Target::resolve(Path::new("/dev/null")).unwrap().kind,
            Kind::Stream
        );
        let err = Target::resolve(d).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::IsADirectory);
        // Under a regular file: fails now, not after the work.
        assert!(Target::resolve(&d.join("old.json/m.json")).is_err());
    }

    #[test]
    fn links_are_followed_to_the_final_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("real")).unwrap();
        std::fs::write(d.join("real/m.json"), b"x").unwrap();
        symlink("real/m.json", d.join("one")).unwrap();
        symlink(d.join("one"), d.join("two")).unwrap();
        symlink("real/missing.json", d.join("dangling")).unwrap();
        symlink("loop", d.join("loop")).unwrap();
        let t = Target::resolve(&d.join("two")).unwrap();
        assert_eq!(t.resolved, d.join("real/m.json"));
        assert_eq!(t.dir(), d.join("real"));
        let t = Target::resolve(&d.join("dangling")).unwrap();
        assert_eq!(
            (t.resolved, t.kind),
            (d.join("real/missing.json"), Kind::Replace)
        );
        assert!(Target::resolve(&d.join("loop")).is_err());
    }

    #[test]
    fn same_file_through_links_dots_and_hard_links() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("sub")).unwrap();
        std::fs::write(d.join("m.json"), b"x").unwrap();
        symlink(d.join("m.json"), d.join("link")).unwrap();
        std::fs::hard_link(d.join("m.json"), d.join("hard")).unwrap();
        let r = |p: &str| Target::resolve(&d.join(p)).unwrap();
        assert!(r("m.json").same_file(&r("link")));
        assert!(r("m.json").same_file(&r("sub/../m.json")));
        assert!(r("m.json").same_file(&r("hard")));
        assert!(r("new").same_file(&r("sub/../new")));
        assert!(!r("m.json").same_file(&r("new")));
        let null = Target::resolve(Path::new("/dev/null")).unwrap();
        assert!(!null.same_file(&null));
        let out = Target::resolve(Path::new("-")).unwrap();
        assert!(!out.same_file(&out));
    }

    #[test]
    fn the_kernels_rule_for_links_in_sticky_directories() {
        let (me, dir_owner, other) = (1000, 0, 1001);
        // /tmp: sticky and world-writable.
        assert!(may_follow(me, 0o41777, dir_owner, me));
        assert!(may_follow(dir_owner, 0o41777, dir_owner, me));
        assert!(!may_follow(other, 0o41777, dir_owner, me));
        assert!(!may_follow(other, 0o1777, dir_owner, dir_owner));
        // Not both sticky and world-writable: every link.
        assert!(may_follow(other, 0o40777, dir_owner, me));
        assert!(may_follow(other, 0o41775, dir_owner, me));
        assert!(may_follow(other, 0o40755, dir_owner, me));
    }

    /// Regression: an output link planted in a sticky, world-writable
    /// directory by another user was followed. Only root can plant one
    /// (CI runs as root); elsewhere the own-link half runs.
    #[test]
    fn foreign_links_in_sticky_directories_are_refused_for_outputs() {
        use std::os::unix::fs::{lchown, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let victim = dir.path().join("victim");
        let link = shared.join("m.json");
        symlink(&victim, &link).unwrap();
        assert_eq!(Target::resolve(&link).unwrap().resolved, victim);
        if lchown(&link, Some(54_321), None).is_err() {
            return;
        }
        let err = Target::resolve(&link).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
        // Through a link of our own: refused all the same.
        let mine = dir.path().join("mine");
        symlink(&link, &mine).unwrap();
        assert!(Target::resolve(&mine).is_err());
        // Reading through it destroys nothing: an input follows it.
        assert_eq!(Target::resolve_input(&link).unwrap().resolved, victim);
    }

    /// Regression: `..` after a directory that does not exist yet was kept
    /// as written, so `new/x/../m.json` and `new/m.json` compared different
    /// although, once the directories are made, they are one file.
    #[test]
    fn dots_through_directories_that_do_not_exist_yet() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("real/deep")).unwrap();
        symlink(d.join("real/deep"), d.join("link")).unwrap();
        let r = |p: &str| Target::resolve(&d.join(p)).unwrap();
        assert!(r("new/x/../m.json").same_file(&r("new/m.json")));
        assert!(r("new/x/y/../../m.json").same_file(&r("new/m.json")));
        assert!(!r("new/x/../m.json").same_file(&r("new/x/m.json")));
        // Back above the nearest existing directory, the kernel's `..`
        // (the physical parent) applies: `link/new/../..` is `real`.
        assert!(r("link/new/../../m.json").same_file(&r("real/m.json")));
        assert!(!r("link/new/../../m.json").same_file(&r("m.json")));
        assert!(r("new/../../m.json").same_file(&r("../m.json")));
    }
}
