//! Reading files whose size tidemill does not control — pipelines, model
//! files, metrics — with a ceiling, so that `/dev/urandom`, a FIFO that
//! never ends or a mistaken multi-gigabyte path fails at once instead of
//! filling memory.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

/// Largest pipeline file read (a pipeline is a few kilobytes of TOML).
pub const MAX_PIPELINE_BYTES: u64 = 1 << 20;
/// Largest model file read: a 2^28-slot hashed model with every weight
/// non-zero is about 12 GiB of JSON.
pub const MAX_MODEL_BYTES: u64 = 16 << 30;
/// Largest metrics file read (one JSON line an epoch).
pub const MAX_METRICS_BYTES: u64 = 256 << 20;

/// A reader that fails, rather than ends, once it would pass `limit` bytes.
#[derive(Debug)]
pub struct Limited<R> {
    inner: R,
    left: u64,
    limit: u64,
}

impl<R: Read> Limited<R> {
    /// Wraps `inner`.
    pub fn new(inner: R, limit: u64) -> Limited<R> {
        Limited {
            inner,
            left: limit,
            limit,
        }
    }
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(too_large(self.limit)),
            };
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

fn too_large(limit: u64) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!(
            "larger than {}, the most tidemill reads",
            crate::memory::human(limit)
        ),
    )
}

/// Opens `path` for reading at most `limit` bytes. A regular file larger
/// than `limit` fails before a byte is read; anything else (a device, a
/// FIFO) fails when it passes the limit.
pub fn open(path: &Path, limit: u64) -> std::io::Result<BufReader<Limited<File>>> {
    let file = File::open(path)?;
    let meta = file.metadata()?;
    if meta.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "is a directory",
        ));
    }
    if meta.is_file() && meta.len() > limit {
        return Err(too_large(limit));
    }
    Ok(BufReader::new(Limited::new(file, limit)))
}

/// Reads at most `limit` bytes of `path` (see [`open`]).
pub fn read(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    open(path, limit)?.read_to_end(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_over_the_limit_fails_and_one_at_it_reads() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path().join("f");
        std::fs::write(&p, b"0123456789").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read(&p, 10).ok(), Some(b"0123456789".to_vec()));
        let e = read(&p, 9).err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("larger than 9 bytes")));
    }

    #[test]
    fn an_endless_device_stops_at_the_limit() {
        let zero = Path::new("/dev/zero");
        if !zero.exists() {
            return;
        }
        let e = read(zero, 1 << 16).err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("larger than")));
    }
}
