//! The build fingerprint: a digest of the sources a build is made from, so
//! that processes built from different sources refuse each other in the
//! cluster handshake even when their version numbers agree, while the same
//! sources built on different machines agree.
//!
//! It depends only on the files' relative paths and contents (line endings
//! normalized): not on git, timestamps, the folder the sources are in, the
//! toolchain or the machine. `build.rs` sets it as `TIDEMILL_BUILD`;
//! `tests/build_fingerprint.rs` checks it.

use std::io;
use std::path::Path;

/// What is hashed, relative to the crate root: files, and folders in full.
pub const INPUTS: [&str; 5] = ["Cargo.toml", "Cargo.lock", "build.rs", "build", "src"];

/// The fingerprint of the crate at `root`: 16 hex digits.
pub fn fingerprint(root: &Path) -> io::Result<String> {
    let mut files = Vec::new();
    for input in INPUTS {
        collect(root, input, &mut files)?;
    }
    files.sort();
    let mut hasher = blake3::Hasher::new();
    for name in &files {
        let text = without_carriage_returns(&std::fs::read(root.join(name))?);
        for part in [name.as_bytes(), &text] {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
    }
    Ok(hasher.finalize().to_hex()[..16].to_string())
}

/// Adds the files at `name` (a file, or a folder in full), as
/// `/`-separated paths relative to `root`. Hidden files and editors'
/// backups (`~`) are left out; a missing input is nothing.
fn collect(root: &Path, name: &str, out: &mut Vec<String>) -> io::Result<()> {
    let meta = match std::fs::metadata(root.join(name)) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if meta.is_file() {
        out.push(name.to_string());
    } else if meta.is_dir() {
        for entry in std::fs::read_dir(root.join(name))? {
            let entry = entry?.file_name();
            let entry = entry.to_string_lossy();
            if !entry.starts_with('.') && !entry.ends_with('~') {
                collect(root, &format!("{name}/{entry}"), out)?;
            }
        }
    }
    Ok(())
}

/// `bytes` with every CR LF made LF (a checkout with Windows line endings
/// is the same source).
fn without_carriage_returns(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for (i, &b) in bytes.iter().enumerate() {
        if !(b == b'\r' && bytes.get(i + 1) == Some(&b'\n')) {
            out.push(b);
        }
    }
    out
}
