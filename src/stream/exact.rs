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
//! - **State** (`[output] state`): committed at every snapshot, when a
//!   signal stops the stream (at the next batch end) and at its end, with
//!   where the stream is ([`StreamMark`]); `--resume` continues from the
//!   newest generation exactly once. A window's state holds the window's
//!   rows with their places in it.
//! - Workers: worker 0 of process 0 reads and enters everything; the
//!   collections are exchanged by key hash, so their arrangements are
//!   spread over every worker and process, and the sums are exact: the same
//!   model on any worker count.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, TryRecvError};
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
use crate::incremental::store::{
    Generation, JobStamp, Place, StateDir, StoredRow, StreamMark, StreamTally, WindowMark,
    STATE_VERSION,
};
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
    /// `--resume`: continue the stream the state's newest generation is a
    /// checkpoint of.
    pub resume: bool,
    /// Resuming from stdin: the row of the stream the producer's first
    /// row is (0: it sends the stream again from its start).
    pub input_offset: u64,
    /// `--abandon`: continue the state of a stream that has not ended as
    /// a new stream, giving up the rest of that one's input.
    pub abandon: bool,
}

/// What an exact stream did (process 0).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ExactSummary {
    /// Rows inserted (over the whole stream, a resumed one's earlier runs
    /// included).
    pub rows: u64,
    /// The input row this run started at (a resumed stream).
    pub resumed_at: Option<u64>,
    /// The signal the stream stopped on (its state was committed there).
    pub stopped_by: Option<String>,
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
    if job.abandon && p.output.state.is_none() {
        return Err(Error::Usage {
            option: "--abandon".into(),
            message: "gives up an unfinished checkpoint in the stream's state: set output.state = \"DIR\"".into(),
        });
    }
    if job.resume && p.output.state.is_none() {
        return Err(Error::Usage {
            option: "--resume".into(),
            message: "an exact stream resumes from its state: set output.state = \"DIR\"".into(),
        });
    }
    if job.input_offset > 0 && !(job.resume && job.input == Input::Stdin) {
        return Err(Error::Usage {
            option: "--input-offset".into(),
            message: "says where a producer on stdin restarts a resumed stream: it needs --input - and --resume".into(),
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
    // A first SIGINT or SIGTERM ends the stream at the next batch end,
    // with its model and state there (the source is open: a signal before
    // that ends the process at once).
    crate::io::signals::stop_at_checkpoint();
    let identity = serde_json::json!({
        "stream_exact": {
            "pipeline": {
                "data": serde_json::to_value(&p.data).unwrap_or_default(),
                "model": serde_json::to_value(&p.model).unwrap_or_default(),
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
                    // A stop request of this process reaches the leader
                    // with the next step (the leader steps at least every
                    // quarter second).
                    let stop = crate::io::signals::stop_requested().is_some();
                    let seen = c.step(
                        worker,
                        Changes {
                            stop,
                            ..Changes::default()
                        },
                    );
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

/// What the source gave the leader.
enum Next {
    /// A batch's rows, and whether the input ended.
    Batch(Vec<super::source::Arrival>, bool),
    /// Nothing yet: a batch is still filling.
    Idle,
}

/// A window's state gathers its files of rows that left into one past
/// this many.
const LEFT_FILES: usize = 32;

/// How long a leader waits on an idle live source before it steps the
/// collections anyway.
const IDLE_STEP: Duration = Duration::from_millis(250);

/// A row in a window, waiting to leave.
#[derive(Debug, Clone)]
struct Waiting {
    id: u128,
    /// Where it was entered in the keys collection.
    at: RowRef,
    vals: RowVals,
    /// Its key (a state keeps it).
    key: String,
    place: Place,
}

impl Waiting {
    /// The row as a windowed state stores it.
    fn stored(&self) -> StoredRow {
        StoredRow {
            id: self.id,
            key: self.key.clone(),
            x: self.vals.x.iter().map(|&b| f64::from_bits(b)).collect(),
            y: f64::from_bits(self.vals.y),
            class: self.vals.class.clone(),
            slots: self.vals.slots.clone(),
            place: Some(self.place),
        }
    }
}

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

impl Window {
    fn is_some(&self) -> bool {
        !matches!(self, Window::None)
    }

    /// Takes row `w` in.
    fn enter(&mut self, w: Waiting) {
        match self {
            Window::None => {}
            Window::Rows { queue, .. } => queue.push_back(w),
            Window::Time {
                heap, rows, newest, ..
            } => {
                *newest = newest.max(w.place.time);
                heap.push(Reverse((Time(w.place.time), w.place.arrival)));
                rows.insert(w.place.arrival, w);
            }
        }
    }

    /// The rows that leave now, oldest first.
    fn leaving(&mut self) -> Vec<Waiting> {
        let mut leaving = Vec::new();
        match self {
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
        leaving
    }

    /// The largest time seen (a time window).
    fn newest(&self) -> f64 {
        match self {
            Window::Time { newest, .. } => *newest,
            _ => f64::NEG_INFINITY,
        }
    }

    fn set_newest(&mut self, t: f64) {
        if let Window::Time { newest, .. } = self {
            *newest = newest.max(t);
        }
    }

    /// The rows it holds, as a state stores them.
    fn stored(&self) -> Vec<StoredRow> {
        match self {
            Window::None => Vec::new(),
            Window::Rows { queue, .. } => queue.iter().map(Waiting::stored).collect(),
            Window::Time { rows, .. } => rows.values().map(Waiting::stored).collect(),
        }
    }
}

/// Worker 0 of process 0: reads, batches, enters, solves, publishes.
struct Leader {
    pipeline: Pipeline,
    input: Input,
    feed: Feed,
    /// The rows of the batch being cut, their number, and when the first
    /// came.
    carry: Vec<super::source::Arrival>,
    carry_rows: usize,
    carry_first: Option<Instant>,
    live: bool,
    draft: FeatureSpec,
    retract: Option<Receiver<Result<Vec<String>>>>,
    retract_open: bool,
    /// Keys taken from `--retract` (a resumed stream's skipped ones
    /// included).
    retract_taken: u64,
    metrics: Option<std::io::BufWriter<std::fs::File>>,
    window: Window,
    /// The window as the pipeline gives it (JSON), for the state.
    window_spec: Option<String>,
    /// Rows that have entered the window (over every stream of the state).
    arrivals: u64,
    /// A watched directory: the file being read and the rows of it read.
    at_file: Option<(String, u64)>,
    /// The stream's identity, as a state's checkpoint records it.
    identity: String,
    /// The checkpoint this run resumes from.
    resume: Option<StreamMark>,
    state: Option<Kept>,
}

/// An `[output] state` a stream continues and leaves: the generation it
/// found (if any), the runs so far and the rows inserted since the last
/// commit.
struct Kept {
    dir: StateDir,
    /// Held from the start to the last commit.
    _lock: std::fs::File,
    /// The generation the next commit writes.
    seq: u64,
    found: Option<Generation>,
    job: JobStamp,
    /// The runs of the last generation (a window's: its one run).
    runs: Vec<String>,
    /// Its files of rows that left the window.
    left_files: Vec<String>,
    /// Forgotten keys no run holds a row of ([`Generation::unmatched`]).
    unmatched: std::collections::BTreeSet<u128>,
    /// Whether a stream added rows to the state.
    extended: bool,
    /// Rows inserted since the last commit (a stream without a window).
    rows: Vec<StoredRow>,
}

/// Where a stream that continues `found` starts, and the checkpoint it
/// resumes from (if it is one of this stream's).
fn resume_point(
    job: &ExactJob,
    found: Option<&Generation>,
    identity: &str,
    dir: &Path,
) -> Result<Option<StreamMark>> {
    let mark = found.and_then(|g| g.stream.as_ref());
    if job.abandon {
        return match mark {
            Some(m) if !m.ended => {
                tracing::warn!(dir = %dir.display(), at = m.source_rows, "the unfinished stream's checkpoint is given up: this stream continues its state from its own input's start");
                Ok(None)
            }
            _ => Err(Error::Usage {
                option: "--abandon".into(),
                message: format!(
                    "{}: the state's newest generation is not a checkpoint of a stream that has not ended: there is nothing to give up",
                    dir.display()
                ),
            }),
        };
    }
    match mark {
        // An ended stream on stdin is not resumed: another producer's
        // stream is another stream, whatever it shares with the last one.
        Some(m)
            if m.identity == identity && job.resume && !(m.ended && job.input == Input::Stdin) =>
        {
            Ok(Some(m.clone()))
        }
        Some(m) if !m.ended => {
            let message = if job.resume {
                format!(
                    "the state's newest generation is a checkpoint of another stream that has not ended (at row {} of its input; this stream differs in its pipeline, input or --retract): resume that one, or use a new state directory",
                    m.source_rows
                )
            } else {
                format!(
                    "the state's newest generation is a checkpoint of a stream that has not ended (at row {} of its input): pass --resume to continue it, or --abandon to give up the rest of its input",
                    m.source_rows
                )
            };
            Err(Error::Usage {
                option: "--resume".into(),
                message: format!("{}: {message}", dir.display()),
            })
        }
        _ => {
            if job.resume {
                tracing::info!(dir = %dir.display(), "no checkpoint of this stream to resume from: the stream starts at its beginning");
            }
            Ok(None)
        }
    }
}

/// Fails unless a stream with window `spec` (none: `None`) may continue
/// the state generation `g`: a window's state holds the window's rows
/// with their places, which only a stream with the same window continues.
fn window_fits(spec: Option<&str>, g: &Generation, dir: &Path) -> Result<()> {
    let theirs = g
        .stream
        .as_ref()
        .and_then(|m| m.window.as_ref())
        .map(|w| w.spec.as_str());
    let message = match (spec, theirs) {
        (None, None) => return Ok(()),
        (Some(a), Some(b)) if a == b => return Ok(()),
        (Some(a), Some(b)) => format!(
            "the state is a window's ({b}); this stream's window is {a}: use a new state directory"
        ),
        (Some(a), None) => format!(
            "this stream keeps a window ({a}) and the state was not written by one (its rows have no places in a window): use a new state directory"
        ),
        (None, Some(b)) => format!(
            "the state is a window's ({b}): continue it with a stream with that window"
        ),
    };
    Err(Error::Checkpoint {
        path: dir.to_path_buf(),
        message,
    })
}

impl Leader {
    fn open(job: &ExactJob) -> Result<Leader> {
        let p = &job.pipeline;
        let mut identity =
            serde_json::from_str::<serde_json::Value>(&super::identity(p, &job.input)?)
                .map_err(|e| Error::Internal(format!("cannot describe the stream: {e}")))?;
        identity["retract"] = match job.retract.as_deref() {
            None => serde_json::Value::Null,
            Some("-") => "-".into(),
            Some(r) => super::canonical(Path::new(r)).into(),
        };
        let identity = identity.to_string();
        let window_spec = p
            .stream
            .window
            .as_ref()
            .map(|w| {
                serde_json::to_string(w)
                    .map_err(|e| Error::Internal(format!("cannot describe the window: {e}")))
            })
            .transpose()?;
        // The state first: where a resumed stream starts.
        let opened = match &p.output.state {
            Some(dir_path) => {
                let dir = StateDir::open(dir_path)?;
                let lock = dir.lock()?;
                let found = dir.newest()?.map(|(_, g)| g);
                if let Some(g) = &found {
                    window_fits(window_spec.as_deref(), g, dir_path)?;
                }
                let resume = resume_point(job, found.as_ref(), &identity, dir_path)?;
                Some((dir, lock, found, resume))
            }
            None => None,
        };
        let resume = opened.as_ref().and_then(|o| o.3.clone());
        let (skip, at_file) = match (&resume, &job.input) {
            (None, _) => (0, None),
            (Some(m), Input::Stdin) => {
                if job.input_offset > m.source_rows {
                    return Err(Error::Usage {
                        option: "--input-offset".into(),
                        message: format!(
                            "the producer starts at row {}, past the {} rows the state's checkpoint holds: rows {}..{} would be lost",
                            job.input_offset, m.source_rows, m.source_rows, job.input_offset
                        ),
                    });
                }
                (m.source_rows - job.input_offset, None)
            }
            (Some(m), Input::Replay { .. }) => (m.source_rows, None),
            (Some(m), Input::Watch { .. }) => match &m.at_file {
                Some(f) => (0, Some(f.clone())),
                None => (m.source_rows, None),
            },
        };
        let feed = Feed::open(&job.input, p.stream.order_by.as_deref(), skip, at_file)?;
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
        let retract_skip = resume.as_ref().map_or(0, |m| m.retract_keys);
        let retract = match &job.retract {
            Some(path) => Some(open_retractions(
                path,
                p.data.key.as_deref().unwrap_or(""),
                retract_skip,
            )?),
            None => None,
        };
        let metrics = match &p.output.metrics {
            Some(path) => {
                let mut o = std::fs::OpenOptions::new();
                o.create(true);
                match &resume {
                    // The lines of batches after the checkpoint come again.
                    Some(m) => {
                        super::publish::keep_lines_before(path, m.tally.batches + 1)
                            .map_err(|e| Error::io(path, e))?;
                        o.append(true);
                    }
                    None => {
                        o.write(true).truncate(true);
                    }
                }
                Some(std::io::BufWriter::new(
                    o.open(path).map_err(|e| Error::io(path, e))?,
                ))
            }
            None => None,
        };
        let job_abandon = job.abandon;
        let state = match (opened, &p.data.key, &p.output.state) {
            (Some((dir, lock, found, _)), Some(key), Some(dir_path)) => {
                let job = crate::incremental::stamp(p, &draft, key);
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
                    runs: found.as_ref().map(|g| g.runs.clone()).unwrap_or_default(),
                    left_files: Vec::new(),
                    // An abandoned stream's requests whose row never came
                    // stand for good.
                    unmatched: found
                        .as_ref()
                        .map(|g| {
                            let mut u = g.unmatched.clone();
                            if job_abandon {
                                u.extend(g.stream.iter().flat_map(|m| m.pending.iter().copied()));
                            }
                            u
                        })
                        .unwrap_or_default(),
                    extended: found.as_ref().is_some_and(|g| g.extended),
                    found,
                    job,
                    rows: Vec::new(),
                })
            }
            _ => None,
        };
        Ok(Leader {
            pipeline: p.clone(),
            input: job.input.clone(),
            carry: Vec::new(),
            carry_rows: 0,
            carry_first: None,
            live: job.input.is_live(),
            feed,
            draft,
            retract_open: retract.is_some(),
            retract,
            retract_taken: retract_skip,
            metrics,
            window,
            window_spec,
            arrivals: 0,
            at_file: resume.as_ref().and_then(|m| m.at_file.clone()),
            identity,
            resume,
            state,
        })
    }

    /// The next batch: at least `stream.batch_rows` rows, or what there is
    /// when the input ends (or, live, `batch_seconds` after its first row),
    /// or when a stop is asked for (`stop`, or a signal to this process).
    /// While a batch fills, [`Next::Idle`] every [`IDLE_STEP`]: the leader
    /// steps the collections with nothing, so that other processes' stop
    /// requests and failures reach it however slow the source.
    fn next_batch(&mut self, stop: bool) -> Result<Next> {
        let s = &self.pipeline.stream;
        let called = Instant::now();
        loop {
            let full = self.carry_rows >= s.batch_rows;
            let timed = match (self.live, self.carry_first, s.batch_seconds) {
                (true, Some(f), Some(limit)) => f.elapsed().as_secs_f64() >= limit,
                _ => false,
            };
            if full || timed || stop || crate::io::signals::stop_requested().is_some() {
                return Ok(Next::Batch(self.take_carry(), false));
            }
            if called.elapsed() >= IDLE_STEP {
                return Ok(Next::Idle);
            }
            match self.feed.poll(Duration::from_millis(50))? {
                Poll::Rows(a) => {
                    self.carry_rows += a.batch.num_rows();
                    self.carry_first.get_or_insert_with(Instant::now);
                    if let Input::Watch { .. } = self.input {
                        let name = a
                            .origin
                            .file_name()
                            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
                        self.at_file = Some((name, a.file_row + a.batch.num_rows() as u64));
                    }
                    self.carry.push(a);
                }
                Poll::Idle => {}
                Poll::End => return Ok(Next::Batch(self.take_carry(), true)),
            }
        }
    }

    /// The rows gathered for the batch being cut.
    fn take_carry(&mut self) -> Vec<super::source::Arrival> {
        self.carry_rows = 0;
        self.carry_first = None;
        std::mem::take(&mut self.carry)
    }

    /// Keys that arrived on `--retract`; if `finish`, all of them, waiting
    /// for the table's end for up to [`IDLE_STEP`] (or until a stop is
    /// asked for). Returns whether the table was read to its end when
    /// `finish` asked.
    fn retractions(&mut self, finish: bool) -> Result<(Vec<String>, bool)> {
        let mut keys = Vec::new();
        let Some(rx) = &self.retract else {
            return Ok((keys, true));
        };
        let called = Instant::now();
        while self.retract_open {
            let got = if finish {
                match rx.recv_timeout(Duration::from_millis(50)) {
                    Ok(b) => Ok(b),
                    Err(RecvTimeoutError::Timeout) => {
                        if called.elapsed() >= IDLE_STEP
                            || crate::io::signals::stop_requested().is_some()
                        {
                            return Ok((keys, false));
                        }
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => Err(TryRecvError::Disconnected),
                }
            } else {
                rx.try_recv()
            };
            match got {
                Ok(batch) => {
                    let batch = batch?;
                    self.retract_taken += batch.len() as u64;
                    keys.extend(batch);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => self.retract_open = false,
            }
        }
        Ok((keys, true))
    }

    fn run(
        &mut self,
        worker: &mut timely::worker::Worker,
        c: &mut Collections,
    ) -> Result<ExactSummary> {
        let p = self.pipeline.clone();
        let dims = self.draft.numeric.len();
        // Rows are entered with their values where a forgotten key may
        // meet one: with --retract, in a window's state (its forgotten
        // keys stay forgotten, and their rows come and go), and where the
        // state forgets keys whose row may still come.
        let resume = self.resume.take();
        let standing = self.state.as_ref().is_some_and(|k| !k.unmatched.is_empty())
            || resume.as_ref().is_some_and(|m| !m.pending.is_empty());
        let keep_rows =
            self.retract.is_some() || (self.window.is_some() && self.state.is_some()) || standing;
        let nb = p.model.kind.is_naive_bayes();
        let mut t = Tracking::from(resume.as_ref());
        let mut total = Normal::default();
        let mut current: Option<Current> = None;
        let mut last_snapshot = Instant::now();
        // Stops asked for by another worker's process.
        let mut stop_seen = false;
        // A state continued: its rows' keys (and, with --retract, their
        // values) and its forgotten keys enter first, and its statistics
        // are where the sums start; a window's state fills the window.
        if let Some(found) = self.state.as_ref().and_then(|k| k.found.clone()) {
            let dir = self
                .state
                .as_ref()
                .map(|k| k.dir.dir().to_path_buf())
                .unwrap_or_default();
            let prior = match &self.state {
                Some(k) => k.dir.all_rows(&found)?,
                None => Vec::new(),
            };
            let mark = found.stream.as_ref();
            if self.window.is_some() {
                let mut waiting = Vec::with_capacity(prior.len());
                for (i, r) in prior.iter().enumerate() {
                    let Some(place) = r.place else {
                        return Err(Error::Checkpoint {
                            path: dir.clone(),
                            message:
                                "a row of a window's state has no place in it: the state is damaged"
                                    .into(),
                        });
                    };
                    waiting.push(Waiting {
                        id: r.id,
                        at: (u32::MAX, i as u64),
                        vals: r.vals(),
                        key: r.key.clone(),
                        place,
                    });
                }
                waiting.sort_by_key(|w| w.place.arrival);
                for w in waiting {
                    self.window.enter(w);
                }
                if let Some(w) = mark.and_then(|m| m.window.as_ref()) {
                    self.window.set_newest(w.newest);
                    self.arrivals = w.arrivals;
                }
            }
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
            t.asked = found.forgotten.clone();
            let seen = c.step(worker, changes);
            check(&seen, &p, &t.asked)?;
            stop_seen |= seen.stop;
            if let Some((m, k)) = mark.zip(self.state.as_mut()) {
                for f in &m.left_files {
                    for (id, out) in k.dir.read_left(f)? {
                        if out {
                            t.left.insert(id);
                        } else {
                            t.left.remove(&id);
                        }
                    }
                }
                k.left_files = m.left_files.clone();
            }
            // Forgotten keys with no row: asked for before their row came
            // (a resumed stream's: the row may still come), or whose row
            // is gone for good (erased, an abandoned stream's that never
            // came, or left a window: a row with the key leaves at once,
            // and the key is no error at the end).
            let awaiting: std::collections::HashSet<u128> = resume
                .as_ref()
                .map(|m| m.pending.iter().copied().collect())
                .unwrap_or_default();
            let unmatched = self
                .state
                .as_ref()
                .map(|k| k.unmatched.clone())
                .unwrap_or_default();
            for (id, d) in &seen.unknown {
                if *d <= 0 {
                    continue;
                }
                // Unmatched first: a resumed stream's pending keys include
                // them, and their row is gone for good.
                if unmatched.contains(id) {
                    *t.pending.entry(*id).or_insert(0) += d;
                    t.left.insert(*id);
                } else if awaiting.contains(id) {
                    *t.pending.entry(*id).or_insert(0) += d;
                } else if self.window.is_some() {
                    *t.pending.entry(*id).or_insert(0) += d;
                    t.left.insert(*id);
                } else {
                    return Err(Error::Checkpoint {
                        path: dir,
                        message: "the state forgets keys none of its rows has: it is damaged"
                            .into(),
                    });
                }
            }
            total = found.stats.clone();
            if resume.is_none() {
                t.summary.rows_continued = total.rows;
            }
            current = solved(&p, &self.draft, &total);
        }
        loop {
            let (arrivals, mut ended) = match self.next_batch(stop_seen)? {
                Next::Batch(arrivals, ended) => (arrivals, ended),
                Next::Idle => {
                    // A batch still filling: an empty step (not a batch)
                    // that carries other processes' stop requests and
                    // failures.
                    let seen = c.step(worker, Changes::default());
                    if let Some(e) = maintain::first_failure(&seen) {
                        return Err(e);
                    }
                    stop_seen |= seen.stop;
                    continue;
                }
            };
            // Keys to forget that have arrived (at the input's end, all of
            // them: waiting for the table's end, with empty steps that
            // carry other processes' stops and failures, unless a stop
            // comes; the stream then stops here and a resume waits again).
            let mut retracted = Vec::new();
            loop {
                let (keys, complete) = self.retractions(ended)?;
                retracted.extend(keys);
                if complete {
                    break;
                }
                if stop_seen || crate::io::signals::stop_requested().is_some() {
                    ended = false;
                    break;
                }
                let seen = c.step(worker, Changes::default());
                if let Some(e) = maintain::first_failure(&seen) {
                    return Err(e);
                }
                stop_seen |= seen.stop;
            }
            let stopping = !ended && (stop_seen || crate::io::signals::stop_requested().is_some());
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
                    let local = (block.file_row.at(i) - a.file_row) as usize;
                    let x = &block.raw[i * dims..(i + 1) * dims];
                    let y = block.label.get(i).unwrap_or(0.0);
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
                        None => format!("#{}", t.stream_row + local as u64),
                    };
                    let digest = KeyDigest::of(&text);
                    let id = digest.id();
                    let too_large = |e| {
                        crate::incremental::too_large(
                            e,
                            &self.draft,
                            &a.origin,
                            None,
                            block.file_row.at(i),
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
                    let at: RowRef = (0, t.stream_row + local as u64);
                    if p.data.key.is_some() {
                        changes.keys.push((id, at));
                    }
                    // A key back after its row left is a row to retract again.
                    if t.left.remove(&id) && self.state.is_some() {
                        t.left_events.push((id, false));
                    }
                    // A run holds a row of the key again (if it was a
                    // forgotten key's, `forget --erase` will find it).
                    if let Some(k) = &mut self.state {
                        k.unmatched.remove(&id);
                    }
                    if keep_rows {
                        changes.rows.push((id, vals.clone()));
                    }
                    batch_rows += 1;
                    let time = match &self.window {
                        Window::None => {
                            if let Some(k) = &mut self.state {
                                k.rows.push(StoredRow {
                                    id,
                                    key: text,
                                    x: x.to_vec(),
                                    y,
                                    class: vals.class.clone(),
                                    slots: vals.slots.clone(),
                                    place: None,
                                });
                            }
                            continue;
                        }
                        Window::Rows { .. } => 0.0,
                        Window::Time { column, .. } => {
                            let Some(Some(time)) = times.as_ref().map(|t| t[local]) else {
                                return Err(Error::MissingValue {
                                    location: Box::new(Location {
                                        file: a.origin.clone(),
                                        row_group: None,
                                        column: Some(column.clone()),
                                        row: Some(block.file_row.at(i)),
                                    }),
                                    what: "a null, unreadable or infinite time".into(),
                                    hint: "every row of a time window needs its time".into(),
                                });
                            };
                            time
                        }
                    };
                    let place = Place {
                        arrival: self.arrivals,
                        time,
                    };
                    self.arrivals += 1;
                    self.window.enter(Waiting {
                        id,
                        at,
                        vals,
                        key: text,
                        place,
                    });
                }
                t.stream_row += a.batch.num_rows() as u64;
            }
            if batch_rows > 0 {
                changes.inserted.push(batch_stats);
                if let Some(k) = &mut self.state {
                    k.extended = true;
                }
            }
            // Rows leaving the window.
            let leaving = self.window.leaving();
            t.summary.expired += leaving.len() as u64;
            // A forget request stands when its row leaves: a key stays
            // forgotten, so a row that comes again with it leaves at once.
            if keep_rows || self.state.is_some() {
                // A retraction that comes after its row has left is a
                // no-op, not a key that never came.
                t.left.extend(leaving.iter().map(|w| w.id));
                if self.state.is_some() {
                    t.left_events.extend(leaving.iter().map(|w| (w.id, true)));
                }
            }
            changes.expired = leaving.into_iter().map(|w| (w.id, w.at, w.vals)).collect();
            for k in retracted {
                let id = KeyDigest::of(&k).id();
                // Into the collections whatever it finds: a key with no row
                // present stays forgotten (its row, if it comes, leaves at
                // once); one whose row has left already is not an error.
                if t.left.contains(&id) {
                    t.summary.retracted_after_leaving += 1;
                }
                t.summary.retracted += 1;
                t.asked.insert(id, k);
                changes.forgotten.push(id);
            }
            let seen: Seen = c.step(worker, changes);
            check(&seen, &p, &t.asked)?;
            stop_seen |= seen.stop;
            // Forgotten keys not present come and go as rows arrive.
            for (id, d) in &seen.unknown {
                *t.pending.entry(*id).or_insert(0) += d;
            }
            t.pending.retain(|_, n| *n != 0);
            total.plus_equals(&seen.stats);
            // A batch cut with no rows (a stop, or the end, at a batch
            // boundary) is not counted: the batches, and so the snapshots'
            // numbers, stay those of an uninterrupted run.
            let counted = !arrivals.is_empty();
            if counted {
                t.summary.batches += 1;
            }
            t.summary.rows += batch_rows;
            t.sq += batch_sq;
            t.scored += batch_scored;
            t.progress.add(&batch_progress);
            // The model of the rows present (none when none are, or while
            // it cannot be solved: naive Bayes before a second class).
            current = solved(&p, &self.draft, &total);
            let due = counted
                && match p.stream.snapshot_every {
                    Some(n) => t.summary.batches.is_multiple_of(n),
                    None => last_snapshot.elapsed().as_secs_f64() >= p.stream.snapshot_seconds,
                };
            if ended {
                // Everything that can fail at the end fails before the
                // last model is written.
                if total.rows <= 0 {
                    return Err(Error::NoRows {
                        what: format!(
                            "the stream's end ({} rows inserted, {} retracted, {} expired)",
                            t.summary.rows, t.summary.retracted, t.summary.expired
                        ),
                        purpose: "hold a model of".into(),
                    });
                }
                // Keys asked to be forgotten whose rows never came.
                let missing: Vec<String> = t
                    .pending
                    .iter()
                    .filter(|(id, n)| **n > 0 && !t.left.contains(*id))
                    .map(|(id, _)| {
                        t.asked
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
            if (ended || due || stopping)
                && solvable
                && total.rows > 0
                && self.publish(&total, t.summary.batches)?
            {
                t.summary.snapshots += 1;
                last_snapshot = Instant::now();
            }
            if let Some(m) = self.metrics.as_mut().filter(|_| counted) {
                let line = serde_json::json!({
                    "batch": t.summary.batches,
                    "rows": batch_rows,
                    "source_rows": t.stream_row,
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
            // The state, after the model: at a snapshot, a stop and the end.
            if ended || due || stopping {
                if let Some(path) = self.commit(&total, &mut t, ended)? {
                    t.summary.state = Some(path.display().to_string());
                }
                if due && !ended {
                    last_snapshot = Instant::now();
                }
            }
            if stopping {
                let signal = crate::io::signals::stop_requested();
                t.summary.stopped_by = Some(
                    signal
                        .map_or("a signal to another process", crate::error::signal_name)
                        .to_string(),
                );
                break;
            }
            if ended {
                break;
            }
        }
        let mut summary = t.summary.clone();
        summary.resumed_at = resume.as_ref().map(|m| m.source_rows);
        summary.rows_present = total.rows;
        summary.objective = current.as_ref().and_then(Current::objective);
        summary.scored = t.scored + t.progress.scored;
        summary.progressive_rmse = (t.scored > 0).then(|| (t.sq / t.scored as f64).sqrt());
        summary.progressive_accuracy = t.progress.accuracy();
        summary.progressive_log_loss = t.progress.log_loss();
        Ok(summary)
    }

    /// Commits a generation of the state (none without `[output] state`):
    /// the rows inserted since the last commit as a new run (a window's
    /// state: the window's rows, as its one run), the statistics of the
    /// rows present, every forgotten key, and where the stream is.
    fn commit(&mut self, total: &Normal, t: &mut Tracking, ended: bool) -> Result<Option<PathBuf>> {
        let window_rows = self.window.is_some().then(|| self.window.stored());
        let Some(k) = &mut self.state else {
            return Ok(None);
        };
        // The rows that left since the last commit (or, once there are
        // many files, all of them in one).
        let events = std::mem::take(&mut t.left_events);
        if !events.is_empty() {
            let name = StateDir::left_name(k.seq);
            if k.left_files.len() >= LEFT_FILES {
                let mut all: Vec<(u128, bool)> = t.left.iter().map(|id| (*id, true)).collect();
                all.sort_unstable();
                k.dir.write_left(&name, &all)?;
                k.left_files = vec![name];
            } else {
                k.dir.write_left(&name, &events)?;
                k.left_files.push(name);
            }
        }
        let mark = StreamMark {
            identity: self.identity.clone(),
            ended,
            source_rows: t.stream_row,
            at_file: self.at_file.clone(),
            retract_keys: self.retract_taken,
            pending: t
                .pending
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(id, _)| *id)
                .collect(),
            left_files: k.left_files.clone(),
            window: self.window_spec.clone().map(|spec| WindowMark {
                spec,
                newest: self.window.newest(),
                arrivals: self.arrivals,
            }),
            tally: t.tally(),
        };
        let name = StateDir::run_name(k.seq, 0);
        match window_rows {
            Some(rows) => {
                let buckets = crate::incremental::store::buckets_for(rows.len() as u64);
                k.dir.write_run(&name, rows, buckets)?;
                k.runs = vec![name];
            }
            None if !k.rows.is_empty() => {
                let rows = std::mem::take(&mut k.rows);
                let buckets = crate::incremental::store::buckets_for(rows.len() as u64);
                k.dir.write_run(&name, rows, buckets)?;
                k.runs.push(name);
                k.dir.merge_newest(k.seq, &mut k.runs)?;
            }
            None => {}
        }
        let mut forgotten = k
            .found
            .as_ref()
            .map(|g| g.forgotten.clone())
            .unwrap_or_default();
        forgotten.extend(t.asked.iter().map(|(id, key)| (*id, key.clone())));
        let generation = Generation {
            version: STATE_VERSION,
            job: k.job.clone(),
            stats: total.clone(),
            runs: k.runs.clone(),
            forgotten,
            source: None,
            extended: k.extended,
            stream: Some(mark),
            unmatched: k.unmatched.clone(),
        };
        let path = k.dir.commit(k.seq, &generation)?;
        k.seq += 1;
        Ok(Some(path))
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

/// Reads keys from `path` on a thread of its own, batch by batch, the
/// first `skip` passed over (a resumed stream took them already).
fn open_retractions(path: &str, key: &str, skip: u64) -> Result<Receiver<Result<Vec<String>>>> {
    let (tx, rx) = sync_channel::<Result<Vec<String>>>(4);
    let (path, key) = (path.to_string(), key.to_string());
    std::thread::Builder::new()
        .name("tidemill-retract".into())
        .spawn(move || {
            let read = || -> Result<()> {
                let (input, column) = crate::incremental::key_table(&path, &key)?;
                let mut to_skip = skip;
                for b in input {
                    let (batch, origin) = b?;
                    let mut keys = crate::incremental::table_keys(&batch, &origin, &column)?;
                    let passed = to_skip.min(keys.len() as u64);
                    keys.drain(..passed as usize);
                    to_skip -= passed;
                    if keys.is_empty() {
                        continue;
                    }
                    if tx.send(Ok(keys)).is_err() {
                        return Ok(());
                    }
                }
                if to_skip > 0 {
                    return Err(Error::Keys {
                        path: PathBuf::from(&path),
                        message: format!(
                            "holds {} key(s), fewer than the {skip} the resumed stream's checkpoint took from it: it is not the table the stream started with",
                            skip - to_skip
                        ),
                    });
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

/// What a stream has done so far, carried over a resume by its state's
/// [`StreamMark`].
#[derive(Debug, Default)]
struct Tracking {
    summary: ExactSummary,
    /// Input rows consumed.
    stream_row: u64,
    /// Forget requests not matched by a row present, by id (net count).
    pending: BTreeMap<u128, isize>,
    /// Every key forgotten (the state's and this stream's), by id.
    asked: BTreeMap<u128, String>,
    /// Ids of rows that left the window (with `--retract` or a state).
    left: std::collections::HashSet<u128>,
    /// With a state: rows that left (`true`) or came back (`false`) since
    /// the last commit, in order.
    left_events: Vec<(u128, bool)>,
    /// Progressive squared errors and rows scored (least squares).
    sq: f64,
    scored: u64,
    /// Progressive validation of a classifier.
    progress: Progress,
}

impl Tracking {
    /// A fresh stream's, or a resumed one's as its checkpoint left it
    /// (its pending keys and left rows come back with the state's keys).
    fn from(resume: Option<&StreamMark>) -> Tracking {
        let Some(m) = resume else {
            return Tracking::default();
        };
        let t = &m.tally;
        Tracking {
            summary: ExactSummary {
                rows: t.rows,
                rows_continued: t.rows_continued,
                retracted: t.retracted,
                expired: t.expired,
                retracted_after_leaving: t.retracted_after_leaving,
                batches: t.batches,
                snapshots: t.snapshots,
                ..ExactSummary::default()
            },
            stream_row: m.source_rows,
            sq: t.squared_error,
            scored: t.scored,
            progress: Progress {
                scored: t.nb_scored,
                correct: t.nb_correct,
                known: t.nb_known,
                loss: t.nb_loss,
            },
            ..Tracking::default()
        }
    }

    /// The counts and sums a checkpoint keeps.
    fn tally(&self) -> StreamTally {
        let s = &self.summary;
        StreamTally {
            rows: s.rows,
            rows_continued: s.rows_continued,
            retracted: s.retracted,
            expired: s.expired,
            retracted_after_leaving: s.retracted_after_leaving,
            batches: s.batches,
            snapshots: s.snapshots,
            squared_error: self.sq,
            scored: self.scored,
            nb_scored: self.progress.scored,
            nb_correct: self.progress.correct,
            nb_known: self.progress.known,
            nb_loss: self.progress.loss,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(path: &Path, skip: u64) -> Result<Vec<String>> {
        let rx = open_retractions(&path.display().to_string(), "id", skip)?;
        let mut all = Vec::new();
        for batch in rx {
            all.extend(batch?);
        }
        Ok(all)
    }

    #[test]
    fn a_resumed_stream_passes_over_the_keys_it_took() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("keys.csv");
        let n = 150_000;
        let text: String = (0..n).map(|i| format!("k{i}\n")).collect();
        std::fs::write(&path, format!("id\n{text}")).unwrap_or_else(|e| panic!("{e}"));
        // Within the first batch the reader gives, and across batches.
        for skip in [0u64, 3, 70_001, n] {
            let got = keys(&path, skip).unwrap_or_else(|e| panic!("{e}"));
            let want: Vec<String> = (skip..n).map(|i| format!("k{i}")).collect();
            assert_eq!(got, want, "skip {skip}");
        }
        // A table with fewer keys than were taken is not the one the
        // stream started with.
        match keys(&path, n + 1) {
            Err(Error::Keys { message, .. }) => {
                assert!(message.contains("fewer than"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }
}
