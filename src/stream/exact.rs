//! `tidemill stream` with an exact model (`optimizer.kind = "exact"`): the
//! rows of every batch are inserted into the maintained collections
//! ([`crate::incremental::maintain`]), the keys of `--retract` and the
//! rows that leave a `[stream] window` are retracted at the same time, and
//! the model of the rows present is solved again at every batch end.
//!
//! - **Progressive validation**: every row is scored by the model of the
//!   rows before its batch, before it is inserted (squared error).
//! - **Retractions** (`--retract PATH|-`): a table of keys, read as it
//!   arrives on a thread of its own; keys that have arrived are retracted
//!   at the next batch end. A key whose row has not arrived yet stays
//!   forgotten, so its row leaves as soon as it comes; one still missing
//!   when the stream ends is an error naming it.
//! - **Windows**: `{ column, length }` keeps the rows whose time is within
//!   `length` of the largest time seen; `{ rows = N }` the last `N` rows.
//!   Rows that leave are retracted directly (keys, statistics and rows go
//!   down), so a window's collections stay the size of the window.
//! - Workers: worker 0 of process 0 reads and enters everything; the
//!   collections are exchanged by key hash, so their arrangements are
//!   spread over every worker and process, and the sums are exact: the same
//!   model on any worker count.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, TryRecvError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float64Type, Int64Type, TimeUnit};
use arrow::record_batch::RecordBatch;
use differential_dataflow::difference::Semigroup;
use serde::Serialize;

use super::source::{Feed, Input, Poll};
use crate::cluster::{Cluster, JobDescription};
use crate::data::encode::{decode_raw, Block, FeatureSpec, LabelUse, Origin};
use crate::error::{Error, Location, Result};
use crate::incremental::maintain::{self, Changes, Collections, RowRef, RowVals, Seen};
use crate::incremental::normal::{KeyDigest, Normal};
use crate::incremental::solve;
use crate::incremental::store::{Generation, JobStamp, StateDir, StoredRow, STATE_VERSION};
use crate::model::bayes::NaiveBayes;
use crate::model::file::ModelFile;
use crate::model::Model;
use crate::spec::{ModelKind, Pipeline, WindowSpec};

/// An exact stream, as the command line gives it.
#[derive(Debug)]
pub struct ExactJob {
    /// The pipeline (outputs already overridden by flags).
    pub pipeline: Pipeline,
    /// The rows to insert.
    pub input: Input,
    /// `--retract`: a table of keys to retract (`-` for stdin).
    pub retract: Option<String>,
}

/// What an exact stream did (process 0).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ExactSummary {
    /// Rows inserted.
    pub rows: u64,
    /// Rows present in the `[output] state` the stream continued.
    pub rows_continued: i64,
    /// The state generation written at the end (`[output] state`).
    pub state: Option<String>,
    /// Rows present at the end.
    pub rows_present: i64,
    /// Keys retracted by `--retract`.
    pub retracted: u64,
    /// Rows that left the window.
    pub expired: u64,
    /// Of those, keys that came after their row had left the window
    /// (nothing to retract, unless the key comes again).
    pub retracted_after_leaving: u64,
    /// Batches.
    pub batches: u64,
    /// Model files written while streaming (the last one included).
    pub snapshots: u64,
    /// The objective of the final model.
    pub objective: Option<f64>,
    /// Root mean squared error of every row scored before it was
    /// inserted (rows that came before any model are not scored; linear).
    pub progressive_rmse: Option<f64>,
    /// Naive Bayes: the share of rows scored before they were inserted
    /// whose class was predicted (a row of a class the model had not seen
    /// counts as wrong).
    pub progressive_accuracy: Option<f64>,
    /// Naive Bayes: the mean log loss of those rows, over the rows of
    /// classes the model had seen (the others have no probability).
    pub progressive_log_loss: Option<f64>,
    /// Rows scored progressively.
    pub scored: u64,
    /// Wall seconds.
    pub seconds: f64,
    /// Rows per second.
    pub rows_per_second: f64,
}

/// Runs the stream on `cluster`. The summary comes back on process 0.
pub fn run(job: ExactJob, cluster: &Cluster) -> Result<Option<ExactSummary>> {
    let p = &job.pipeline;
    if p.output.state.is_some() && p.stream.window.is_some() {
        return Err(Error::PipelineValue {
            key: "output.state".into(),
            message: "a windowed stream retracts the rows that leave it; keeping a state of a window is not supported yet (leave out [output] state or the window)".into(),
        });
    }
    if p.output.state.is_some() && p.data.key.is_none() {
        return Err(Error::PipelineValue {
            key: "data.key".into(),
            message: "[output] state keeps rows by their key so that they can be forgotten: name the key column".into(),
        });
    }
    if job.retract.is_some() && p.data.key.is_none() {
        return Err(Error::PipelineValue {
            key: "data.key".into(),
            message: "--retract names rows by their key: name the key column".into(),
        });
    }
    let started = Instant::now();
    let leader = if cluster.is_leader() {
        Some(Leader::open(&job)?)
    } else {
        None
    };
    let identity = serde_json::json!({
        "stream_exact": {
            "pipeline": {
                "data": serde_json::to_value(&p.data).unwrap_or_default(),
                "model": serde_json::to_value(p.model).unwrap_or_default(),
                "stream": serde_json::to_value(&p.stream).unwrap_or_default(),
            },
            "input": job.input.describe(),
            "retract": job.retract,
        }
    });
    let description = JobDescription {
        identity,
        labels: Default::default(),
    };
    let leader = Arc::new(Mutex::new(leader));
    let guards = cluster.execute(move || Ok(description), {
        let leader = Arc::clone(&leader);
        move |worker| {
            let mine = match worker.index() {
                0 => leader.lock().unwrap_or_else(PoisonError::into_inner).take(),
                _ => None,
            };
            let mut c = Collections::new(worker);
            match mine {
                Some(mut l) => {
                    let out = l.run(worker, &mut c);
                    // Whatever happened, the other workers learn that
                    // this was the last time (and why, if it failed).
                    let failed = out.as_ref().err().map(maintain::encode_failure);
                    c.step(
                        worker,
                        Changes {
                            failed,
                            end: true,
                            ..Changes::default()
                        },
                    );
                    out.map(Some)
                }
                None => loop {
                    let seen = c.step(worker, Changes::default());
                    if let Some(e) = maintain::first_failure(&seen) {
                        break Err(e);
                    }
                    if seen.end {
                        break Ok(None);
                    }
                    if seen.closed {
                        break Err(Error::Worker {
                            worker: 0,
                            message: "the stream's leader stopped without ending the stream".into(),
                        });
                    }
                },
            }
        }
    })?;
    let mut summary = None;
    for r in cluster.join(guards)? {
        if let Some(s) = r? {
            summary = Some(s);
        }
    }
    Ok(summary.map(|mut s: ExactSummary| {
        s.seconds = started.elapsed().as_secs_f64();
        s.rows_per_second = s.rows as f64 / s.seconds.max(1e-9);
        s
    }))
}

/// A row in a window, waiting to leave.
type Waiting = (u128, RowRef, RowVals);

/// A time for ordering (`f64` by its total order).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Time(f64);
impl Eq for Time {}
impl PartialOrd for Time {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Time {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&o.0)
    }
}

/// The rows a window holds, oldest first out.
enum Window {
    None,
    Time {
        column: String,
        length: f64,
        in_seconds: bool,
        newest: f64,
        // (time, arrival) → the row.
        heap: BinaryHeap<Reverse<(Time, u64)>>,
        rows: BTreeMap<u64, Waiting>,
    },
    Rows {
        n: u64,
        queue: VecDeque<Waiting>,
    },
}

/// Worker 0 of process 0: reads, batches, enters, solves, publishes.
struct Leader {
    pipeline: Pipeline,
    feed: Feed,
    live: bool,
    draft: FeatureSpec,
    retract: Option<Receiver<Result<Vec<String>>>>,
    retract_open: bool,
    metrics: Option<std::io::BufWriter<std::fs::File>>,
    window: Window,
    state: Option<Kept>,
}

/// An `[output] state` a stream continues and leaves: the generation it
/// found (if any) and the rows it inserted, for the run it writes at the
/// end.
struct Kept {
    dir: StateDir,
    /// Held from the start to the commit.
    _lock: std::fs::File,
    /// The generation the stream will commit.
    seq: u64,
    found: Option<Generation>,
    job: JobStamp,
    rows: Vec<StoredRow>,
}

impl Leader {
    fn open(job: &ExactJob) -> Result<Leader> {
        let p = &job.pipeline;
        let feed = Feed::open(&job.input, p.stream.order_by.as_deref(), 0, None)?;
        let origin = PathBuf::from(job.input.describe());
        let draft = crate::plan::draft(p, feed.schema(), &origin)?.spec;
        let window = match &p.stream.window {
            None => Window::None,
            Some(WindowSpec::Rows(n)) => Window::Rows {
                n: *n,
                queue: VecDeque::new(),
            },
            Some(WindowSpec::Time {
                column,
                length,
                in_seconds,
            }) => {
                let t = feed
                    .schema()
                    .field_with_name(column)
                    .map_err(|_| Error::missing_column(&origin, column, feed.schema()))?;
                if !*in_seconds && !is_number(t.data_type()) {
                    return Err(Error::PipelineValue {
                        key: "stream.window.length".into(),
                        message: format!(
                            "'{column}' holds times ({}): give the length as a duration such as \"7d\"",
                            t.data_type()
                        ),
                    });
                }
                if *in_seconds && is_number(t.data_type()) {
                    return Err(Error::PipelineValue {
                        key: "stream.window.length".into(),
                        message: format!(
                            "'{column}' holds numbers ({}), not times: give the length as a number in its units",
                            t.data_type()
                        ),
                    });
                }
                Window::Time {
                    column: column.clone(),
                    length: *length,
                    in_seconds: *in_seconds,
                    newest: f64::NEG_INFINITY,
                    heap: BinaryHeap::new(),
                    rows: BTreeMap::new(),
                }
            }
        };
        let retract = match &job.retract {
            Some(path) => Some(open_retractions(path, p.data.key.as_deref().unwrap_or(""))?),
            None => None,
        };
        let metrics = match &p.output.metrics {
            Some(path) => Some(std::io::BufWriter::new(
                std::fs::File::create(path).map_err(|e| Error::io(path, e))?,
            )),
            None => None,
        };
        let state = match (&p.output.state, &p.data.key) {
            (Some(dir_path), Some(key)) => {
                let dir = StateDir::open(dir_path)?;
                let lock = dir.lock()?;
                let job = crate::incremental::stamp(p, &draft, key);
                let found = dir.newest()?.map(|(_, g)| g);
                if let Some(g) = &found {
                    if g.job != job {
                        return Err(Error::Checkpoint {
                            path: dir_path.clone(),
                            message: format!(
                                "the state belongs to another job (statistics '{}', label '{}', features [{}]); this stream has statistics '{}', label '{}', features [{}]",
                                g.job.statistics,
                                g.job.label,
                                g.job.features.join(", "),
                                job.statistics,
                                job.label,
                                job.features.join(", ")
                            ),
                        });
                    }
                }
                Some(Kept {
                    seq: dir.next_seq()?,
                    dir,
                    _lock: lock,
                    found,
                    job,
                    rows: Vec::new(),
                })
            }
            _ => None,
        };
        Ok(Leader {
            pipeline: p.clone(),
            live: job.input.is_live(),
            feed,
            draft,
            retract_open: retract.is_some(),
            retract,
            metrics,
            window,
            state,
        })
    }

    /// The next batch: at least `stream.batch_rows` rows, or what there is
    /// when the input ends (or, live, `batch_seconds` after its first row).
    fn next_batch(&mut self) -> Result<(Vec<super::source::Arrival>, bool)> {
        let s = &self.pipeline.stream;
        let mut arrivals = Vec::new();
        let mut rows = 0;
        let mut first: Option<Instant> = None;
        loop {
            if rows >= s.batch_rows {
                return Ok((arrivals, false));
            }
            if let (true, Some(f), Some(limit)) = (self.live, first, s.batch_seconds) {
                if f.elapsed().as_secs_f64() >= limit {
                    return Ok((arrivals, false));
                }
            }
            match self.feed.poll(Duration::from_millis(50))? {
                Poll::Rows(a) => {
                    rows += a.batch.num_rows();
                    first.get_or_insert_with(Instant::now);
                    arrivals.push(a);
                }
                Poll::Idle => {}
                Poll::End => return Ok((arrivals, true)),
            }
        }
    }

    /// Keys that arrived on `--retract` (all of them, waiting for its end,
    /// if `finish`).
    fn retractions(&mut self, finish: bool) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        let Some(rx) = &self.retract else {
            return Ok(keys);
        };
        while self.retract_open {
            let got = if finish {
                rx.recv().map_err(|_| TryRecvError::Disconnected)
            } else {
                rx.try_recv()
            };
            match got {
                Ok(batch) => keys.extend(batch?),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => self.retract_open = false,
            }
        }
        Ok(keys)
    }

    fn run(
        &mut self,
        worker: &mut timely::worker::Worker,
        c: &mut Collections,
    ) -> Result<ExactSummary> {
        let p = self.pipeline.clone();
        let dims = self.draft.numeric.len();
        let keep_rows = self.retract.is_some();
        let mut summary = ExactSummary::default();
        let nb = p.model.kind.is_naive_bayes();
        let mut total = Normal::default();
        let mut current: Option<Current> = None;
        let mut progress = Progress::default();
        let (mut sq, mut scored) = (0.0f64, 0u64);
        let mut stream_row = 0u64;
        // Forget requests not matched by a row present, by id (net count).
        let mut pending: BTreeMap<u128, isize> = BTreeMap::new();
        let mut asked: BTreeMap<u128, String> = BTreeMap::new();
        // With --retract: the keys of rows that left the window.
        let mut left: std::collections::HashSet<u128> = std::collections::HashSet::new();
        let mut last_snapshot = Instant::now();
        // A state continued: its rows' keys (and, with --retract, their
        // values) and its forgotten keys enter first, and its statistics
        // are where the sums start.
        if let Some(found) = self.state.as_ref().and_then(|k| k.found.as_ref()) {
            let prior = self
                .state
                .as_ref()
                .map(|k| k.dir.all_rows(found))
                .transpose()?
                .unwrap_or_default();
            let changes = Changes {
                keys: prior
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (r.id, (u32::MAX, i as u64)))
                    .collect(),
                rows: if keep_rows {
                    prior.iter().map(|r| (r.id, r.vals())).collect()
                } else {
                    Vec::new()
                },
                forgotten: found.forgotten.keys().copied().collect(),
                ..Changes::default()
            };
            let seen = c.step(worker, changes);
            check(&seen, &p, &asked)?;
            if seen.unknown.iter().any(|(_, d)| *d > 0) {
                return Err(Error::Checkpoint {
                    path: self
                        .state
                        .as_ref()
                        .map(|k| k.dir.dir().to_path_buf())
                        .unwrap_or_default(),
                    message: "the state forgets keys none of its rows has: it is damaged".into(),
                });
            }
            total = found.stats.clone();
            summary.rows_continued = total.rows;
            current = solved(&p, &self.draft, &total);
        }
        loop {
            let (arrivals, ended) = self.next_batch()?;
            // Without a key column the rows' keys are their places in the
            // stream: unique by construction, so the collections need not
            // check them (nor hold them).
            let mut changes = Changes {
                expire_rows: keep_rows,
                expire_keys: p.data.key.is_some(),
                ..Changes::default()
            };
            let mut batch_stats = if nb {
                Normal::default()
            } else {
                Normal::zero_of(dims)
            };
            let mut batch_progress = Progress::default();
            let (mut batch_sq, mut batch_scored, mut batch_rows) = (0.0f64, 0u64, 0u64);
            for a in &arrivals {
                let origin = Origin {
                    file: &a.origin,
                    row_group: None,
                    first_row: a.file_row,
                };
                let labels = if nb {
                    LabelUse::Tokens
                } else {
                    LabelUse::Value
                };
                let block = decode_raw(&a.batch, &self.draft, labels, &origin)?;
                let keys = match &p.data.key {
                    Some(k) => Some(crate::incremental::keys_of(&a.batch, k, &origin)?),
                    None => None,
                };
                let times = match &self.window {
                    Window::Time {
                        column, in_seconds, ..
                    } => Some(times_of(&a.batch, column, *in_seconds, &origin)?),
                    _ => None,
                };
                for i in 0..block.rows {
                    let local = (block.file_row[i] - a.file_row) as usize;
                    let x = &block.raw[i * dims..(i + 1) * dims];
                    let y = block.label.get(i).copied().unwrap_or(0.0);
                    match &current {
                        Some(Current::Ridge(s)) => {
                            let m = s.theta[0]
                                + x.iter()
                                    .enumerate()
                                    .map(|(j, v)| s.theta[1 + j] * (v - s.center[j]) / s.scale[j])
                                    .sum::<f64>();
                            batch_sq += (y - m) * (y - m);
                            batch_scored += 1;
                        }
                        Some(Current::Bayes(model, classes)) => {
                            batch_progress.score(model, classes, &block, i);
                        }
                        None => {}
                    }
                    if p.model.kind == ModelKind::MultinomialNb {
                        crate::incremental::negative_count(&self.draft, &block, i, &origin)?;
                    }
                    let text = match &keys {
                        Some(k) => k[local].clone(),
                        None => format!("#{}", stream_row + local as u64),
                    };
                    let digest = KeyDigest::of(&text);
                    let id = digest.id();
                    let too_large = |e| {
                        crate::incremental::too_large(
                            e,
                            &self.draft,
                            &a.origin,
                            None,
                            block.file_row[i],
                        )
                    };
                    let vals = if nb {
                        let (class, slots) = crate::incremental::class_row(&block, i);
                        batch_stats
                            .add_class_row(&digest, x, &class, &slots)
                            .map_err(too_large)?;
                        RowVals::of_class(digest, x, class, slots)
                    } else {
                        batch_stats.add_row(&digest, x, y).map_err(too_large)?;
                        RowVals::new(digest, x, y)
                    };
                    let at: RowRef = (0, stream_row + local as u64);
                    if p.data.key.is_some() {
                        changes.keys.push((id, at));
                    }
                    // A key back after its row left is a row to retract again.
                    left.remove(&id);
                    if keep_rows {
                        changes.rows.push((id, vals.clone()));
                    }
                    if let Some(k) = &mut self.state {
                        k.rows.push(StoredRow {
                            id,
                            key: text.clone(),
                            x: x.to_vec(),
                            y,
                            class: vals.class.clone(),
                            slots: vals.slots.clone(),
                        });
                    }
                    batch_rows += 1;
                    match &mut self.window {
                        Window::None => {}
                        Window::Rows { queue, .. } => queue.push_back((id, at, vals)),
                        Window::Time {
                            heap,
                            rows,
                            newest,
                            column,
                            ..
                        } => {
                            let Some(Some(t)) = times.as_ref().map(|t| t[local]) else {
                                return Err(Error::MissingValue {
                                    location: Box::new(Location {
                                        file: a.origin.clone(),
                                        row_group: None,
                                        column: Some(column.clone()),
                                        row: Some(block.file_row[i]),
                                    }),
                                    what: "a null, unreadable or infinite time".into(),
                                    hint: "every row of a time window needs its time".into(),
                                });
                            };
                            *newest = newest.max(t);
                            heap.push(Reverse((Time(t), at.1)));
                            rows.insert(at.1, (id, at, vals));
                        }
                    }
                }
                stream_row += a.batch.num_rows() as u64;
            }
            if batch_rows > 0 {
                changes.inserted.push(batch_stats);
            }
            // Rows leaving the window.
            let mut leaving: Vec<Waiting> = Vec::new();
            match &mut self.window {
                Window::None => {}
                Window::Rows { n, queue } => {
                    while queue.len() as u64 > *n {
                        leaving.extend(queue.pop_front());
                    }
                }
                Window::Time {
                    length,
                    newest,
                    heap,
                    rows,
                    ..
                } => {
                    let cut = *newest - *length;
                    while let Some(Reverse((Time(t), arrival))) = heap.peek().copied() {
                        if t > cut {
                            break;
                        }
                        heap.pop();
                        leaving.extend(rows.remove(&arrival));
                    }
                }
            }
            summary.expired += leaving.len() as u64;
            // A forget request stands when its row leaves: a key stays
            // forgotten, so a row that comes again with it leaves at once.
            for (id, _, _) in &leaving {
                if keep_rows {
                    // A retraction that comes after its row has left is a
                    // no-op, not a key that never came.
                    left.insert(*id);
                }
            }
            changes.expired = leaving;
            // Keys to forget that have arrived.
            for k in self.retractions(ended)? {
                let id = KeyDigest::of(&k).id();
                // Into the collections whatever it finds: a key with no row
                // present stays forgotten (its row, if it comes, leaves at
                // once); one whose row has left already is not an error.
                if left.contains(&id) {
                    summary.retracted_after_leaving += 1;
                }
                summary.retracted += 1;
                asked.insert(id, k);
                changes.forgotten.push(id);
            }
            let seen: Seen = c.step(worker, changes);
            check(&seen, &p, &asked)?;
            // Forgotten keys not present come and go as rows arrive.
            for (id, d) in &seen.unknown {
                *pending.entry(*id).or_insert(0) += d;
            }
            total.plus_equals(&seen.stats);
            summary.batches += 1;
            summary.rows += batch_rows;
            sq += batch_sq;
            scored += batch_scored;
            progress.add(&batch_progress);
            // The model of the rows present (none when none are, or while
            // it cannot be solved: naive Bayes before a second class).
            current = solved(&p, &self.draft, &total);
            let due = match p.stream.snapshot_every {
                Some(n) => summary.batches % n == 0,
                None => last_snapshot.elapsed().as_secs_f64() >= p.stream.snapshot_seconds,
            };
            if ended {
                // Everything that can fail at the end fails before the
                // last model is written.
                if total.rows <= 0 {
                    return Err(Error::NoRows {
                        what: format!(
                            "the stream's end ({} rows inserted, {} retracted, {} expired)",
                            summary.rows, summary.retracted, summary.expired
                        ),
                        purpose: "hold a model of".into(),
                    });
                }
                // Keys asked to be forgotten whose rows never came.
                let missing: Vec<String> = pending
                    .iter()
                    .filter(|(id, n)| **n > 0 && !left.contains(*id))
                    .map(|(id, _)| {
                        asked
                            .get(id)
                            .map_or_else(|| format!("{id:x}"), |k| format!("'{k}'"))
                    })
                    .collect();
                if !missing.is_empty() {
                    return Err(Error::Keys {
                        path: PathBuf::from("--retract"),
                        message: format!(
                            "{} key(s) to forget never arrived on the input: {}{}",
                            missing.len(),
                            missing
                                .iter()
                                .take(10)
                                .cloned()
                                .collect::<Vec<_>>()
                                .join(", "),
                            if missing.len() > 10 { ", …" } else { "" }
                        ),
                    });
                }
                // The model of the rows present must be solvable, written
                // or not.
                crate::incremental::model_of(&p, &self.draft, &total, "the stream's rows")?;
            }
            // A snapshot waits while the model cannot be solved (naive
            // Bayes before its second class); the end has been checked.
            let solvable = ended || current.is_some();
            if (ended || due)
                && solvable
                && total.rows > 0
                && self.publish(&total, summary.batches)?
            {
                summary.snapshots += 1;
                last_snapshot = Instant::now();
            }
            if let Some(m) = &mut self.metrics {
                let line = serde_json::json!({
                    "batch": summary.batches,
                    "rows": batch_rows,
                    "source_rows": stream_row,
                    "rows_present": total.rows,
                    "progressive_rmse": (batch_scored > 0).then(|| (batch_sq / batch_scored as f64).sqrt()),
                    "progressive_accuracy": batch_progress.accuracy(),
                    "progressive_log_loss": batch_progress.log_loss(),
                    "objective": current.as_ref().and_then(Current::objective),
                });
                writeln!(m, "{line}").and_then(|_| m.flush()).map_err(|e| {
                    Error::io(
                        p.output.metrics.as_deref().unwrap_or(Path::new("metrics")),
                        e,
                    )
                })?;
            }
            if ended {
                break;
            }
        }
        // The state: this stream's rows as a run, then the generation
        // (after the last model was written).
        if let Some(k) = self.state.take() {
            let buckets = crate::incremental::store::buckets_for(k.rows.len() as u64);
            let name = StateDir::run_name(k.seq, 0);
            let extended = !k.rows.is_empty() || k.found.as_ref().is_some_and(|g| g.extended);
            k.dir.write_run(&name, k.rows, buckets)?;
            let (mut runs, mut forgotten) = match k.found {
                Some(g) => (g.runs, g.forgotten),
                None => (Vec::new(), BTreeMap::new()),
            };
            runs.push(name);
            forgotten.extend(asked.iter().map(|(id, key)| (*id, key.clone())));
            let generation = Generation {
                version: STATE_VERSION,
                job: k.job,
                stats: total.clone(),
                runs,
                forgotten,
                source: None,
                extended,
            };
            summary.state = Some(k.dir.commit(k.seq, &generation)?.display().to_string());
        }
        summary.rows_present = total.rows;
        summary.objective = current.as_ref().and_then(Current::objective);
        summary.scored = scored + progress.scored;
        summary.progressive_rmse = (scored > 0).then(|| (sq / scored as f64).sqrt());
        summary.progressive_accuracy = progress.accuracy();
        summary.progressive_log_loss = progress.log_loss();
        Ok(summary)
    }

    /// Writes the model of `total` (and a numbered copy when
    /// `stream.snapshot_keep` asks for them).
    fn publish(&self, total: &Normal, batch: u64) -> Result<bool> {
        let p = &self.pipeline;
        let Some(path) = &p.output.model else {
            return Ok(false);
        };
        let model: ModelFile =
            crate::incremental::model_of(p, &self.draft, total, "the stream's rows")?;
        let text = model.to_json()?;
        crate::io::atomic::write("--model-out", path, text.as_bytes())?;
        if p.stream.snapshot_keep > 0 {
            let numbered = super::publish::numbered(path, batch);
            crate::io::atomic::write("--model-out", &numbered, text.as_bytes())?;
            if batch > p.stream.snapshot_keep as u64 {
                let old = super::publish::numbered(path, batch - p.stream.snapshot_keep as u64);
                let _ = std::fs::remove_file(old);
            }
        }
        Ok(true)
    }
}

/// The model of the rows of `total` (none when there are none, or while
/// it cannot be solved: naive Bayes before a second class).
fn solved(p: &Pipeline, draft: &FeatureSpec, total: &Normal) -> Option<Current> {
    if total.rows <= 0 {
        return None;
    }
    if p.model.kind.is_naive_bayes() {
        crate::incremental::bayes::fit(&p.model, draft, total)
            .ok()
            .map(|(m, spec)| Current::Bayes(m, spec.classes.unwrap_or_default()))
    } else {
        crate::incremental::solve_ridge(p, draft, total)
            .ok()
            .map(Current::Ridge)
    }
}

/// The model of the rows present, as the next batch's rows are scored by.
enum Current {
    Ridge(solve::Solution),
    /// The model and its classes.
    Bayes(NaiveBayes, Vec<String>),
}

impl Current {
    fn objective(&self) -> Option<f64> {
        match self {
            Current::Ridge(s) => Some(s.objective),
            Current::Bayes(..) => None,
        }
    }
}

/// Progressive validation of a classifier: rows scored, right, and the
/// log loss of those whose class the model knew.
#[derive(Debug, Default, Clone)]
struct Progress {
    scored: u64,
    correct: u64,
    known: u64,
    loss: f64,
}

impl Progress {
    /// Scores row `i` of `block` (its label a class token) with `model`.
    fn score(&mut self, model: &NaiveBayes, classes: &[String], block: &Block, i: usize) {
        let mut out = vec![0.0; model.k];
        model.margins(block, i, &mut out);
        let best = (0..out.len()).fold(0, |b, j| if out[j] > out[b] { j } else { b });
        let truth = classes.iter().position(|c| *c == block.tokens[i]);
        self.scored += 1;
        if truth == Some(best) {
            self.correct += 1;
        }
        if let Some(t) = truth {
            self.known += 1;
            self.loss += crate::model::loss::loss(model.kind, &out, t as f64);
        }
    }

    fn add(&mut self, o: &Progress) {
        self.scored += o.scored;
        self.correct += o.correct;
        self.known += o.known;
        self.loss += o.loss;
    }

    fn accuracy(&self) -> Option<f64> {
        (self.scored > 0).then(|| self.correct as f64 / self.scored as f64)
    }

    fn log_loss(&self) -> Option<f64> {
        (self.known > 0).then(|| self.loss / self.known as f64)
    }
}

/// Fails on what the collections reported: repeated keys, keys forgotten
/// twice, a failed worker.
fn check(seen: &Seen, p: &Pipeline, asked: &BTreeMap<u128, String>) -> Result<()> {
    if let Some(e) = maintain::first_failure(seen) {
        return Err(e);
    }
    // Rows of a continued state are marked with unit u32::MAX.
    let in_stream = seen
        .repeated
        .iter()
        .find(|(_, (unit, _))| *unit != u32::MAX);
    if let Some((_, (_, row))) = in_stream.or(seen.repeated.first()) {
        let state = seen.repeated.iter().any(|(_, (unit, _))| *unit == u32::MAX);
        return Err(Error::Keys {
            path: PathBuf::from("(stream)"),
            message: format!(
                "{} row(s) repeat a key of data.key = '{}' (a key names one row, and stays forgotten once forgotten), the first at row {row} of the stream{}",
                seen.repeated.len(),
                p.data.key.as_deref().unwrap_or(""),
                if state { "; keys of the [output] state count" } else { "" }
            ),
        });
    }
    if !seen.again.is_empty() {
        let names: Vec<String> = seen
            .again
            .iter()
            .take(10)
            .map(|id| {
                asked
                    .get(id)
                    .map_or_else(|| format!("{id:x}"), |k| format!("'{k}'"))
            })
            .collect();
        return Err(Error::Keys {
            path: PathBuf::from("--retract"),
            message: format!(
                "{} key(s) were asked to be forgotten twice: {}",
                seen.again.len(),
                names.join(", ")
            ),
        });
    }
    Ok(())
}

fn is_number(t: &DataType) -> bool {
    t.is_integer() || t.is_floating()
}

/// The window column's values: seconds for times, the values for numbers.
fn times_of(
    batch: &RecordBatch,
    column: &str,
    in_seconds: bool,
    origin: &Origin,
) -> Result<Vec<Option<f64>>> {
    let at = |row: Option<u64>, what: String| Error::MissingValue {
        location: Box::new(Location {
            file: origin.file.to_path_buf(),
            row_group: origin.row_group,
            column: Some(column.to_string()),
            row,
        }),
        what,
        hint: "every row needs a time for the window".into(),
    };
    let array = batch
        .column_by_name(column)
        .ok_or_else(|| at(None, "no such column".into()))?;
    let (values, per_second): (arrow::array::ArrayRef, f64) = match array.data_type() {
        t if is_number(t) => {
            if in_seconds {
                return Err(at(None, format!("a number ({t}), not a time")));
            }
            let v = arrow::compute::cast(array, &DataType::Float64)
                .map_err(|e| at(None, e.to_string()))?;
            (v, 1.0)
        }
        DataType::Timestamp(_, _)
        | DataType::Date32
        | DataType::Date64
        | DataType::Utf8
        | DataType::LargeUtf8 => {
            let v = arrow::compute::cast(array, &DataType::Timestamp(TimeUnit::Microsecond, None))
                .and_then(|t| arrow::compute::cast(&t, &DataType::Int64))
                .map_err(|e| at(None, format!("not readable as a time: {e}")))?;
            (v, 1e6)
        }
        t => {
            return Err(at(
                None,
                format!("a column of type {t}, not a time or a number"),
            ))
        }
    };
    // A null, unreadable or non-finite time is `None`: an error only for
    // a row that is kept (`skip_row` may drop it for another reason).
    Ok((0..values.len())
        .map(|i| {
            if values.is_null(i) {
                return None;
            }
            let v = match values.data_type() {
                DataType::Float64 => values.as_primitive::<Float64Type>().value(i),
                _ => values.as_primitive::<Int64Type>().value(i) as f64 / per_second,
            };
            v.is_finite().then_some(v)
        })
        .collect())
}

/// Reads keys from `path` on a thread of its own, batch by batch.
fn open_retractions(path: &str, key: &str) -> Result<Receiver<Result<Vec<String>>>> {
    let (tx, rx) = sync_channel::<Result<Vec<String>>>(4);
    let (path, key) = (path.to_string(), key.to_string());
    std::thread::Builder::new()
        .name("tidemill-retract".into())
        .spawn(move || {
            let read = || -> Result<()> {
                let (input, column) = crate::incremental::key_table(&path, &key)?;
                for b in input {
                    let (batch, origin) = b?;
                    let keys = crate::incremental::table_keys(&batch, &origin, &column)?;
                    if tx.send(Ok(keys)).is_err() {
                        return Ok(());
                    }
                }
                Ok(())
            };
            if let Err(e) = read() {
                let _ = tx.send(Err(e));
            }
        })
        .map_err(|e| Error::Internal(format!("cannot start the retraction reader: {e}")))?;
    Ok(rx)
}
