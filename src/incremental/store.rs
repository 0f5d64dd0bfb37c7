//! The state directory of an exact model (`[output] state = "DIR"`).
//!
//! What the maintained collections reduce to, and what a later command
//! needs to continue from them:
//!
//! - **generations** `checkpoint-NNNNNNNNNNNN.tmck` (the checkpoint store:
//!   self-checking, written to a temporary file, fsynced, renamed): the
//!   statistics of the rows present ([`Normal`]), the keys forgotten so
//!   far, the job they belong to and the row runs; the newest whole one is
//!   the state;
//! - **row runs** `rows-G-W.bin`: the rows inserted by generation `G`'s
//!   worker `W`, by key, cut into buckets by key hash so that forgetting a
//!   few keys reads a few buckets: bucket blobs (each a checkpoint-format
//!   record, digest-checked when read), an index (a record too: the run's
//!   number of buckets and each bucket's `(bucket, offset, length)`), and
//!   the index's offset in the last 8 bytes. Each run has the buckets its
//!   own rows need.
//!   Runs are immutable; a retraction is a key in the generation's
//!   forgotten set, as a differential trace keeps a retraction beside the
//!   batch that inserted the row.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::normal::Normal;
use crate::checkpoint::format;
use crate::checkpoint::store::Store;
use crate::error::{Error, Result};

/// The layout version of generations and runs.
pub const STATE_VERSION: u32 = 4;

/// Rows per bucket a run aims at (the unit of reading when forgetting).
pub const BUCKET_ROWS: u64 = 512;

/// What a state belongs to: a later `forget` must have the same.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStamp {
    /// The label column.
    pub label: String,
    /// The key column.
    pub key: String,
    /// The numeric feature columns, in weight order.
    pub features: Vec<String>,
    /// `data.on_missing`.
    pub on_missing: String,
    /// What the statistics are of: `linear` (least squares) or
    /// `naive_bayes` (per class; either naive Bayes model solves from them).
    pub statistics: String,
    /// The hashed categorical columns and their hash bits (naive Bayes).
    pub categorical: Vec<String>,
    /// `data.hash_bits` where there are categorical columns, else 0.
    pub hash_bits: u32,
}

/// One generation of the state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// What the state belongs to.
    pub job: JobStamp,
    /// The statistics of the rows present.
    pub stats: Normal,
    /// The row runs (file names in the state directory).
    pub runs: Vec<String>,
    /// Keys forgotten so far, by id (their text beside it).
    pub forgotten: BTreeMap<u128, String>,
    /// A re-optimised model's state (statistics `rows`): every row of
    /// `data.train` when it was built, which a `forget` checks the data
    /// against. `None` for the exact models (their rows are in `runs`).
    pub source: Option<SourceStamp>,
    /// Whether a stream added rows that are not `data.train`'s: training
    /// again into this state would drop them.
    pub extended: bool,
}

/// The rows of a training source: their number and key digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceStamp {
    /// Rows.
    pub rows: u64,
    /// The sum of their keys' digests.
    pub keys: super::normal::KeyDigest,
}

/// A row as a run stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredRow {
    /// The key's id ([`super::normal::KeyDigest::id`]).
    pub id: u128,
    /// The key as text.
    pub key: String,
    /// Features in weight order (raw values, missing ones filled).
    pub x: Vec<f64>,
    /// Label (least squares).
    pub y: f64,
    /// The class (naive Bayes).
    pub class: Option<String>,
    /// Hashed slots of its tokens (naive Bayes).
    pub slots: Vec<u32>,
}

impl StoredRow {
    /// The row as the collections hold it.
    pub fn vals(&self) -> super::maintain::RowVals {
        let digest = super::normal::KeyDigest::of(&self.key);
        match &self.class {
            Some(c) => {
                super::maintain::RowVals::of_class(digest, &self.x, c.clone(), self.slots.clone())
            }
            None => super::maintain::RowVals::new(digest, &self.x, self.y),
        }
    }
}

/// The bucket of a key id.
pub fn bucket_of(id: u128, buckets: u64) -> u64 {
    ((id >> 64) as u64) % buckets.max(1)
}

/// The number of buckets for `rows` rows.
pub fn buckets_for(rows: u64) -> u64 {
    (rows / BUCKET_ROWS).max(1)
}

/// An open state directory.
#[derive(Debug)]
pub struct StateDir {
    store: Store,
}

fn corrupt(path: &Path, why: impl std::fmt::Display) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        message: format!("state: {why}"),
    }
}

impl StateDir {
    /// Opens (creating) the directory.
    pub fn open(dir: &Path) -> Result<StateDir> {
        Ok(StateDir {
            store: Store::open(dir)?,
        })
    }

    /// Locks the directory for this command (`DIR/.lock`, released when
    /// the returned file is dropped): two commands on one state would each
    /// write the next generation from the same one, and one's change would
    /// be lost.
    pub fn lock(&self) -> Result<File> {
        crate::io::dir_lock::lock(self.dir(), "output.state")
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        self.store.dir()
    }

    /// The newest whole generation and its number, if any.
    pub fn newest(&self) -> Result<Option<(u64, Generation)>> {
        // A state is only as good as its newest generation: going back to
        // an older one would bring forgotten rows back. A damaged newest
        // generation is an error, never skipped.
        let Some(loaded) = self.store.newest()? else {
            if let Some(seq) = self.store.list()?.last() {
                return Err(corrupt(
                    &self.store.path(*seq),
                    "no generation of the state is whole (restore the directory from a backup)",
                ));
            }
            return Ok(None);
        };
        if let Some((path, why)) = loaded.skipped.first() {
            return Err(corrupt(
                path,
                format!(
                    "the newest generation is damaged ({why}); going back to an older one would bring forgotten rows back (restore the directory from a backup)"
                ),
            ));
        }
        // The version leads the payload: an older layout is named as such
        // rather than failing to decode.
        let version: u32 = bincode::deserialize(&loaded.payload)
            .map_err(|e| corrupt(&loaded.path, format!("not a state generation: {e}")))?;
        if version != STATE_VERSION {
            return Err(corrupt(
                &loaded.path,
                format!(
                    "layout version {version}; this build reads {STATE_VERSION} (train into a new state directory)"
                ),
            ));
        }
        let generation: Generation = bincode::deserialize(&loaded.payload)
            .map_err(|e| corrupt(&loaded.path, format!("not a state generation: {e}")))?;
        Ok(Some((loaded.seq, generation)))
    }

    /// The number the next generation gets.
    pub fn next_seq(&self) -> Result<u64> {
        Ok(self.store.list()?.last().map_or(1, |s| s + 1))
    }

    /// Commits generation `seq` (its runs must be written already), then
    /// removes generations older than the previous one and the runs no
    /// kept generation names.
    pub fn commit(&self, seq: u64, generation: &Generation) -> Result<PathBuf> {
        let payload = bincode::serialize(generation)
            .map_err(|e| corrupt(self.dir(), format!("cannot encode: {e}")))?;
        let path = self.store.write(seq, &payload)?;
        self.store.prune(2)?;
        let mut keep: Vec<String> = generation.runs.clone();
        for s in self.store.list()? {
            if s == seq {
                continue;
            }
            if let Ok(bytes) = std::fs::read(self.store.path(s)) {
                if let Ok(p) = format::decode(&bytes) {
                    if let Ok(g) = bincode::deserialize::<Generation>(p) {
                        keep.extend(g.runs);
                    }
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir(self.dir()) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("rows-") && name.ends_with(".bin") && !keep.contains(&name) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(path)
    }

    /// The file name of run `part` of generation `seq`.
    pub fn run_name(seq: u64, part: usize) -> String {
        format!("rows-{seq}-{part}.bin")
    }

    /// Writes a run of `rows` (any order) cut into `buckets` buckets,
    /// durably.
    pub fn write_run(&self, name: &str, rows: Vec<StoredRow>, buckets: u64) -> Result<()> {
        let path = self.dir().join(name);
        let fail = |e: std::io::Error| Error::io(&path, e);
        let buckets = buckets.max(1);
        let mut by_bucket: BTreeMap<u64, Vec<StoredRow>> = BTreeMap::new();
        for r in rows {
            by_bucket
                .entry(bucket_of(r.id, buckets))
                .or_default()
                .push(r);
        }
        let mut file = std::io::BufWriter::new(File::create(&path).map_err(fail)?);
        let mut index = RunIndex {
            buckets,
            entries: Vec::with_capacity(by_bucket.len()),
        };
        let mut offset = 0u64;
        for (b, mut rows) in by_bucket {
            rows.sort_by_key(|r| r.id);
            let payload = bincode::serialize(&rows)
                .map_err(|e| corrupt(&path, format!("cannot encode rows: {e}")))?;
            let blob = format::encode(&payload);
            file.write_all(&blob).map_err(fail)?;
            index.entries.push((b, offset, blob.len() as u64));
            offset += blob.len() as u64;
        }
        let payload = bincode::serialize(&index)
            .map_err(|e| corrupt(&path, format!("cannot encode the index: {e}")))?;
        file.write_all(&format::encode(&payload)).map_err(fail)?;
        file.write_all(&offset.to_le_bytes()).map_err(fail)?;
        let file = file.into_inner().map_err(|e| fail(e.into_error()))?;
        file.sync_all().map_err(fail)?;
        Ok(())
    }

    /// The stored rows whose ids are among `ids`, from every run.
    pub fn lookup(&self, generation: &Generation, ids: &[u128]) -> Result<Vec<StoredRow>> {
        let mut found = Vec::new();
        for name in &generation.runs {
            let mut run = self.open_run(name)?;
            let mut wanted: BTreeMap<u64, Vec<u128>> = BTreeMap::new();
            for &id in ids {
                wanted
                    .entry(bucket_of(id, run.index.buckets))
                    .or_default()
                    .push(id);
            }
            for e in run.index.entries.clone() {
                if let Some(ids) = wanted.get(&e.0) {
                    let rows = run.bucket(e)?;
                    found.extend(rows.into_iter().filter(|r| ids.contains(&r.id)));
                }
            }
        }
        Ok(found)
    }

    /// Every stored row of every run (forgotten ones included).
    pub fn all_rows(&self, generation: &Generation) -> Result<Vec<StoredRow>> {
        let mut found = Vec::new();
        for name in &generation.runs {
            let mut run = self.open_run(name)?;
            for e in run.index.entries.clone() {
                found.extend(run.bucket(e)?);
            }
        }
        Ok(found)
    }

    /// Opens a run and reads its index.
    fn open_run(&self, name: &str) -> Result<OpenRun> {
        let path = self.dir().join(name);
        let fail = |e: std::io::Error| Error::io(&path, e);
        let mut file = File::open(&path).map_err(fail)?;
        let len = file.metadata().map_err(fail)?.len();
        if len < 8 {
            return Err(corrupt(&path, "a row run shorter than its footer"));
        }
        file.seek(SeekFrom::Start(len - 8)).map_err(fail)?;
        let mut tail = [0u8; 8];
        file.read_exact(&mut tail).map_err(fail)?;
        let at = u64::from_le_bytes(tail);
        if at > len - 8 {
            return Err(corrupt(&path, "a row run's index offset is past its end"));
        }
        let index: RunIndex = read_record(&mut file, &path, at, len - 8 - at)?;
        if index.buckets == 0 {
            return Err(corrupt(&path, "a row run with no buckets"));
        }
        Ok(OpenRun {
            file,
            path,
            index,
            end: at,
        })
    }
}

/// A run's index: its number of buckets, and where each bucket's rows are.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RunIndex {
    buckets: u64,
    /// `(bucket, offset, length)`, by bucket.
    entries: Vec<(u64, u64, u64)>,
}

/// A run opened for reading.
struct OpenRun {
    file: File,
    path: PathBuf,
    index: RunIndex,
    /// Where the buckets end (the index's offset).
    end: u64,
}

impl OpenRun {
    /// The rows of one bucket.
    fn bucket(&mut self, (b, off, n): (u64, u64, u64)) -> Result<Vec<StoredRow>> {
        if off.checked_add(n).is_none_or(|end| end > self.end) {
            return Err(corrupt(
                &self.path,
                format!("bucket {b} lies outside the run"),
            ));
        }
        read_record(&mut self.file, &self.path, off, n)
    }
}

fn read_record<T: serde::de::DeserializeOwned>(
    file: &mut File,
    path: &Path,
    offset: u64,
    len: u64,
) -> Result<T> {
    let fail = |e: std::io::Error| Error::io(path, e);
    file.seek(SeekFrom::Start(offset)).map_err(fail)?;
    let mut bytes = vec![0u8; usize::try_from(len).map_err(|_| corrupt(path, "record too large"))?];
    file.read_exact(&mut bytes).map_err(fail)?;
    let payload = format::decode(&bytes).map_err(|e| corrupt(path, e))?;
    bincode::deserialize(payload).map_err(|e| corrupt(path, format!("undecodable record: {e}")))
}
