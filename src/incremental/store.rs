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

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::normal::Normal;
use crate::checkpoint::format;
use crate::checkpoint::store::Store;
use crate::error::{Error, Result};

/// The layout version of generations and runs.
pub const STATE_VERSION: u32 = 5;

/// Runs of one level a stream's commits gather before they are merged
/// ([`StateDir::merge_newest`]).
pub const MERGE_FAN_IN: usize = 4;

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
    /// The stream that committed this generation, and where it was: an
    /// unfinished one is continued only by `stream --resume`.
    pub stream: Option<StreamMark>,
    /// Forgotten keys no run holds a row of: rows `forget --erase` removed,
    /// and forget requests of an abandoned stream (`stream --abandon`)
    /// whose row never came. A row that comes with one later leaves at
    /// once (the key stays forgotten).
    pub unmatched: BTreeSet<u128>,
}

/// Where the exact stream that committed a generation was: enough for
/// `tidemill stream --resume` to continue it exactly once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamMark {
    /// The stream's identity (pipeline less its outputs and publishing
    /// settings, input, retractions): a resumed stream must have the same.
    pub identity: String,
    /// Whether the stream ended (false: committed at a snapshot or when a
    /// signal stopped it).
    pub ended: bool,
    /// Input rows consumed.
    pub source_rows: u64,
    /// A watched directory: the file being read and the rows of it read.
    pub at_file: Option<(String, u64)>,
    /// Keys taken from `--retract`.
    pub retract_keys: u64,
    /// Forgotten keys not matched by a row present (asked before their
    /// row came, or whose row left the window).
    pub pending: Vec<u128>,
    /// The files (`left-G.bin`, in order) recording the ids of rows that
    /// left the window, and came back (a retraction of one that left is a
    /// no-op, not a key that never came).
    pub left_files: Vec<String>,
    /// The window, if the stream keeps one (its rows are the state's).
    pub window: Option<WindowMark>,
    /// The stream's counts and progressive sums so far.
    pub tally: StreamTally,
}

/// The window of a windowed stream's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowMark {
    /// The window, as the pipeline gives it (JSON).
    pub spec: String,
    /// The largest time seen (a time window).
    pub newest: f64,
    /// Rows that have entered the window, over every stream of the state
    /// (the next row's arrival number).
    pub arrivals: u64,
}

/// An exact stream's counts and progressive sums, carried over a resume.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamTally {
    /// Rows inserted.
    pub rows: u64,
    /// Rows present in the state the stream started from.
    pub rows_continued: i64,
    /// Keys retracted.
    pub retracted: u64,
    /// Rows that left the window.
    pub expired: u64,
    /// Retractions of rows that had left the window.
    pub retracted_after_leaving: u64,
    /// Batches.
    pub batches: u64,
    /// Model files written.
    pub snapshots: u64,
    /// Sum of squared progressive errors (least squares) and rows scored.
    pub squared_error: f64,
    /// Rows scored (least squares).
    pub scored: u64,
    /// Rows scored (naive Bayes), right, of a known class, and their log
    /// loss sum.
    pub nb_scored: u64,
    /// Naive Bayes rows predicted right.
    pub nb_correct: u64,
    /// Naive Bayes rows of a class the model knew.
    pub nb_known: u64,
    /// Their log loss sum.
    pub nb_loss: f64,
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
    /// A windowed stream's row: where it is in the window.
    pub place: Option<Place>,
}

/// Where a row of a windowed stream's state is in its window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Place {
    /// Its arrival number (the order rows entered the window).
    pub arrival: u64,
    /// Its time (a time window; 0 for a window of rows).
    pub time: f64,
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
        self.commit_keeping(seq, generation, 2)
    }

    /// [`StateDir::commit`], keeping the newest `generations` (1:
    /// no file names a run the new generation does not, as an erasure
    /// needs).
    pub fn commit_keeping(
        &self,
        seq: u64,
        generation: &Generation,
        generations: usize,
    ) -> Result<PathBuf> {
        let payload = bincode::serialize(generation)
            .map_err(|e| corrupt(self.dir(), format!("cannot encode: {e}")))?;
        let path = self.store.write(seq, &payload)?;
        self.store.prune(generations.max(1))?;
        let named = |g: &Generation| {
            let mut files = g.runs.clone();
            if let Some(m) = &g.stream {
                files.extend(m.left_files.iter().cloned());
            }
            files
        };
        let mut keep: Vec<String> = named(generation);
        for s in self.store.list()? {
            if s == seq {
                continue;
            }
            if let Ok(bytes) = std::fs::read(self.store.path(s)) {
                if let Ok(p) = format::decode(&bytes) {
                    if let Ok(g) = bincode::deserialize::<Generation>(p) {
                        keep.extend(named(&g));
                    }
                }
            }
        }
        // With one generation kept (an erasure), every file no longer
        // named must go, and durably: a run left behind would still hold
        // erased rows.
        let strict = generations <= 1;
        let entries = match std::fs::read_dir(self.dir()) {
            Ok(entries) => Some(entries),
            Err(e) if strict => return Err(Error::io(self.dir(), e)),
            Err(_) => None,
        };
        for e in entries.into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let ours = name.starts_with("rows-") || name.starts_with("left-");
            if ours && name.ends_with(".bin") && !keep.contains(&name) {
                match std::fs::remove_file(e.path()) {
                    Err(err) if strict => return Err(Error::io(e.path(), err)),
                    _ => {}
                }
            }
        }
        if strict {
            File::open(self.dir())
                .and_then(|d| d.sync_all())
                .map_err(|e| Error::io(self.dir(), e))?;
        }
        Ok(path)
    }

    /// The file name of generation `seq`'s record of rows that left a
    /// window.
    pub fn left_name(seq: u64) -> String {
        format!("left-{seq}.bin")
    }

    /// Writes `events` (an id whose row left the window: `true`; that came
    /// back: `false`), in order, durably, as one checkpoint-format record.
    pub fn write_left(&self, name: &str, events: &[(u128, bool)]) -> Result<()> {
        let path = self.dir().join(name);
        let payload = bincode::serialize(events)
            .map_err(|e| corrupt(&path, format!("cannot encode: {e}")))?;
        let fail = |e: std::io::Error| Error::io(&path, e);
        let mut file = File::create(&path).map_err(fail)?;
        file.write_all(&format::encode(&payload)).map_err(fail)?;
        file.sync_all().map_err(fail)
    }

    /// The events [`StateDir::write_left`] wrote to `name`.
    pub fn read_left(&self, name: &str) -> Result<Vec<(u128, bool)>> {
        let path = self.dir().join(name);
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let payload = format::decode(&bytes).map_err(|e| corrupt(&path, e))?;
        bincode::deserialize(payload)
            .map_err(|e| corrupt(&path, format!("undecodable record: {e}")))
    }

    /// Keeps the runs of `runs` few as a stream adds one at every commit
    /// (size-tiered, as an LSM tree compacts): a run's level is its size
    /// in powers of 4 (under 16 KiB: 0, under 64 KiB: 1, …); the newest
    /// [`MERGE_FAN_IN`] runs of one level are merged into one (a level up),
    /// and a newest run above the level of the ones before it takes in
    /// every trailing run below its level. Levels then fall from the oldest run to the
    /// newest, with fewer than `MERGE_FAN_IN` runs of each: a logarithmic
    /// number of runs, each row rewritten once per level. Merged runs are
    /// named `rows-SEQ-1`, `rows-SEQ-2`, …; the runs they replace stay
    /// until no kept generation names them.
    pub fn merge_newest(&self, seq: u64, runs: &mut Vec<String>) -> Result<()> {
        let level = |name: &String| -> Result<u32> {
            let path = self.dir().join(name);
            let bytes = std::fs::metadata(&path)
                .map(|m| m.len())
                .map_err(|e| Error::io(&path, e))?;
            Ok((bytes / (4 << 10)).max(1).ilog(4))
        };
        let mut part = 1;
        loop {
            let levels: Vec<u32> = runs.iter().map(level).collect::<Result<_>>()?;
            let n = runs.len();
            let take = if n >= 2 && levels[n - 1] > levels[n - 2] {
                // A newest run above the ones before it takes in every
                // trailing run below its level, in one rewrite.
                let mut start = n - 1;
                while start > 0 && levels[start - 1] < levels[n - 1] {
                    start -= 1;
                }
                n - start
            } else if n >= MERGE_FAN_IN
                && levels[n - MERGE_FAN_IN..].windows(2).all(|w| w[0] == w[1])
            {
                MERGE_FAN_IN
            } else {
                return Ok(());
            };
            let merged = runs.split_off(n - take);
            let rows = self.rows_of(&merged)?;
            let name = Self::run_name(seq, part);
            let buckets = buckets_for(rows.len() as u64);
            self.write_run(&name, rows, buckets)?;
            runs.push(name);
            part += 1;
        }
    }

    /// Rewrites the runs of `runs` that hold a row of `ids` without those
    /// rows, as new runs `rows-SEQ-1`, `rows-SEQ-2`, … (their other
    /// buckets copied byte for byte, still checked when read); the others
    /// stay. Returns the new list of runs, in the same order, and the ids
    /// whose rows were removed.
    pub fn erase(
        &self,
        seq: u64,
        runs: &[String],
        ids: &BTreeSet<u128>,
    ) -> Result<(Vec<String>, BTreeSet<u128>)> {
        let mut out = Vec::with_capacity(runs.len());
        let mut removed = BTreeSet::new();
        let mut part = 1;
        for name in runs {
            let mut run = self.open_run(name)?;
            let targets: BTreeSet<u64> = ids
                .iter()
                .map(|&id| bucket_of(id, run.index.buckets))
                .collect();
            // The buckets that lose rows, rewritten.
            let mut rewritten: BTreeMap<u64, Vec<StoredRow>> = BTreeMap::new();
            for e in run.index.entries.clone() {
                if !targets.contains(&e.0) {
                    continue;
                }
                let rows = run.bucket(e)?;
                if rows.iter().any(|r| ids.contains(&r.id)) {
                    removed.extend(rows.iter().filter(|r| ids.contains(&r.id)).map(|r| r.id));
                    rewritten.insert(
                        e.0,
                        rows.into_iter().filter(|r| !ids.contains(&r.id)).collect(),
                    );
                }
            }
            if rewritten.is_empty() {
                out.push(name.clone());
                continue;
            }
            let new_name = Self::run_name(seq, part);
            part += 1;
            let mut w = RunWriter::create(self.dir().join(&new_name), run.index.buckets)?;
            for e in run.index.entries.clone() {
                let blob = match rewritten.get(&e.0) {
                    Some(rows) if rows.is_empty() => continue,
                    Some(rows) => w.encode(rows)?,
                    None => run.raw(e)?,
                };
                w.bucket(e.0, &blob)?;
            }
            w.finish()?;
            out.push(new_name);
        }
        Ok((out, removed))
    }

    /// The file name of run `part` of generation `seq`.
    pub fn run_name(seq: u64, part: usize) -> String {
        format!("rows-{seq}-{part}.bin")
    }

    /// Writes a run of `rows` (any order) cut into `buckets` buckets,
    /// durably.
    pub fn write_run(&self, name: &str, rows: Vec<StoredRow>, buckets: u64) -> Result<()> {
        let path = self.dir().join(name);
        let buckets = buckets.max(1);
        let mut by_bucket: BTreeMap<u64, Vec<StoredRow>> = BTreeMap::new();
        for r in rows {
            by_bucket
                .entry(bucket_of(r.id, buckets))
                .or_default()
                .push(r);
        }
        let mut w = RunWriter::create(path, buckets)?;
        for (b, mut rows) in by_bucket {
            rows.sort_by_key(|r| r.id);
            let blob = w.encode(&rows)?;
            w.bucket(b, &blob)?;
        }
        w.finish()
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
        self.rows_of(&generation.runs)
    }

    /// Every stored row of the runs `names`.
    pub fn rows_of(&self, names: &[String]) -> Result<Vec<StoredRow>> {
        let mut found = Vec::new();
        for name in names {
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

/// A run being written: bucket records, then the index, then the index's
/// offset; fsynced when finished.
struct RunWriter {
    path: PathBuf,
    file: std::io::BufWriter<File>,
    index: RunIndex,
    offset: u64,
}

impl RunWriter {
    fn create(path: PathBuf, buckets: u64) -> Result<RunWriter> {
        let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
        Ok(RunWriter {
            path,
            file: std::io::BufWriter::new(file),
            index: RunIndex {
                buckets,
                entries: Vec::new(),
            },
            offset: 0,
        })
    }

    /// A bucket's rows as a record.
    fn encode(&self, rows: &[StoredRow]) -> Result<Vec<u8>> {
        let payload = bincode::serialize(rows)
            .map_err(|e| corrupt(&self.path, format!("cannot encode rows: {e}")))?;
        Ok(format::encode(&payload))
    }

    /// Appends bucket `b`'s record.
    fn bucket(&mut self, b: u64, blob: &[u8]) -> Result<()> {
        self.file
            .write_all(blob)
            .map_err(|e| Error::io(&self.path, e))?;
        self.index.entries.push((b, self.offset, blob.len() as u64));
        self.offset += blob.len() as u64;
        Ok(())
    }

    /// Writes the index and its offset, and syncs the file.
    fn finish(mut self) -> Result<()> {
        let fail = |e: std::io::Error| Error::io(&self.path, e);
        let payload = bincode::serialize(&self.index)
            .map_err(|e| corrupt(&self.path, format!("cannot encode the index: {e}")))?;
        self.file
            .write_all(&format::encode(&payload))
            .map_err(fail)?;
        self.file
            .write_all(&self.offset.to_le_bytes())
            .map_err(fail)?;
        let file = self.file.into_inner().map_err(|e| fail(e.into_error()))?;
        file.sync_all().map_err(fail)
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
        self.within(b, off, n)?;
        read_record(&mut self.file, &self.path, off, n)
    }

    /// One bucket's record as it is on disk.
    fn raw(&mut self, (b, off, n): (u64, u64, u64)) -> Result<Vec<u8>> {
        self.within(b, off, n)?;
        let fail = |e: std::io::Error| Error::io(&self.path, e);
        self.file.seek(SeekFrom::Start(off)).map_err(fail)?;
        let mut bytes =
            vec![0u8; usize::try_from(n).map_err(|_| corrupt(&self.path, "record too large"))?];
        self.file.read_exact(&mut bytes).map_err(fail)?;
        Ok(bytes)
    }

    fn within(&self, b: u64, off: u64, n: u64) -> Result<()> {
        if off.checked_add(n).is_none_or(|end| end > self.end) {
            return Err(corrupt(
                &self.path,
                format!("bucket {b} lies outside the run"),
            ));
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: u128) -> StoredRow {
        StoredRow {
            id,
            key: format!("k{id}"),
            x: vec![id as f64, 0.5],
            y: 1.0,
            class: None,
            slots: Vec::new(),
            place: None,
        }
    }

    /// Commits of runs of irregular sizes: after every merge the runs hold
    /// every row inserted exactly once, their levels fall from the oldest
    /// to the newest, and they stay few.
    #[test]
    fn merging_keeps_every_row_once_and_the_runs_few() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let state = StateDir::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let mut runs: Vec<String> = Vec::new();
        let mut next = 0u128;
        // A fixed, irregular pattern of run sizes (rows per commit).
        let sizes = [3usize, 40, 7, 900, 1, 1, 250, 60, 2000, 5, 5, 5, 5, 300, 12];
        for seq in 1..=120u64 {
            let n = sizes[seq as usize % sizes.len()];
            let rows: Vec<StoredRow> = (0..n as u128).map(|i| row(next + i)).collect();
            next += n as u128;
            let name = StateDir::run_name(seq, 0);
            state
                .write_run(&name, rows, buckets_for(n as u64))
                .unwrap_or_else(|e| panic!("{e}"));
            runs.push(name);
            state
                .merge_newest(seq, &mut runs)
                .unwrap_or_else(|e| panic!("{e}"));
            let mut ids: Vec<u128> = state
                .rows_of(&runs)
                .unwrap_or_else(|e| panic!("{e}"))
                .iter()
                .map(|r| r.id)
                .collect();
            ids.sort_unstable();
            assert_eq!(ids, (0..next).collect::<Vec<_>>(), "after commit {seq}");
            let levels: Vec<u32> = runs
                .iter()
                .map(|r| {
                    let bytes = std::fs::metadata(dir.path().join(r))
                        .map(|m| m.len())
                        .unwrap_or_else(|e| panic!("{e}"));
                    (bytes / (4 << 10)).max(1).ilog(4)
                })
                .collect();
            assert!(
                levels.windows(2).all(|w| w[0] >= w[1]),
                "levels rise at commit {seq}: {levels:?}"
            );
            for l in &levels {
                let same = levels.iter().filter(|m| *m == l).count();
                assert!(same < MERGE_FAN_IN, "{same} runs of level {l}: {levels:?}");
            }
        }
    }

    /// An erasure removes exactly the rows of the ids asked for, from the
    /// runs that hold them, and leaves the other runs as they are.
    #[test]
    fn erasing_removes_exactly_the_rows_asked_for() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let state = StateDir::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let runs: Vec<String> = (0..3u64)
            .map(|w| {
                let name = StateDir::run_name(1, w as usize);
                let rows = (0..2000u128).map(|i| row(w as u128 * 10_000 + i)).collect();
                state
                    .write_run(&name, rows, 4)
                    .unwrap_or_else(|e| panic!("{e}"));
                name
            })
            .collect();
        // Ids in the first and third runs, and one in none.
        let gone: BTreeSet<u128> = [5u128, 1999, 20_000, 20_777, 99_999].into_iter().collect();
        let (after, removed) = state
            .erase(2, &runs, &gone)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(removed, [5u128, 1999, 20_000, 20_777].into_iter().collect());
        assert_eq!(
            after[1], runs[1],
            "a run with none of the ids was rewritten"
        );
        assert_ne!(after[0], runs[0]);
        let mut ids: Vec<u128> = state
            .rows_of(&after)
            .unwrap_or_else(|e| panic!("{e}"))
            .iter()
            .map(|r| r.id)
            .collect();
        ids.sort_unstable();
        let want: Vec<u128> = (0..3u128)
            .flat_map(|w| (0..2000u128).map(move |i| w * 10_000 + i))
            .filter(|id| !gone.contains(id))
            .collect();
        assert_eq!(ids, want);
        // The rewritten run is found by key as the original was.
        let g = |runs: Vec<String>| Generation {
            version: STATE_VERSION,
            job: JobStamp {
                label: "y".into(),
                key: "k".into(),
                features: Vec::new(),
                on_missing: "error".into(),
                statistics: "linear".into(),
                categorical: Vec::new(),
                hash_bits: 0,
            },
            stats: Normal::default(),
            runs,
            forgotten: BTreeMap::new(),
            source: None,
            extended: false,
            stream: None,
            unmatched: BTreeSet::new(),
        };
        let found = state
            .lookup(&g(after), &[6, 20_001, 5])
            .unwrap_or_else(|e| panic!("{e}"));
        let mut found: Vec<u128> = found.iter().map(|r| r.id).collect();
        found.sort_unstable();
        assert_eq!(found, [6, 20_001]);
    }
}
