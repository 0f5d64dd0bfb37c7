//! The leader (worker 0): takes rows from the source, cuts them into
//! batches and each batch into steps, keeps the running statistics, and
//! sends every worker its slice of each step.
//!
//! Backpressure: the leader sends at most a few steps beyond the last one
//! its replica applied ([`Sharing::lookahead`]), and cuts batch `e + 1` only once batch `e`
//! has ended; it takes rows from the source only to cut a batch. The
//! source's reader thread holds at most a few record batches, so a
//! producer faster than training waits on its pipe.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::engine::{Piece, Rows, Start, StepIn};
use super::sharing::Sharing;
use super::source::{Arrival, Feed, Poll};
use crate::data::encode::{decode_raw, FeatureSpec, LabelUse, Origin};
use crate::data::moments::Moments;
use crate::dataflow::Failure;
use crate::error::Result;
use crate::spec::{OnMissing, Pipeline};

/// Rows of a step's chunk: a step's gradient is the exact sum of its
/// chunks' partials, each rounded once, and workers take whole chunks, so
/// the sum is the same on any worker count.
pub const CHUNK_ROWS: usize = 128;

/// How the numeric features' statistics (centre and scale under
/// `data.standardize`, the fill under `on_missing = "mean"`) are set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Statistics {
    /// As the warm-start model has them, for the whole stream.
    Frozen,
    /// Exact moments of every row that arrived so far (the batch about to
    /// be trained included), per feature.
    Running(Vec<Moments>),
    /// None are needed (no standardisation, no mean fill).
    Unused,
}

impl Statistics {
    /// What the leader keeps for a job whose spec is `spec`.
    pub fn of(p: &Pipeline, spec: &FeatureSpec, frozen: bool) -> Statistics {
        let needed = p.data.standardize || p.data.on_missing == OnMissing::Mean;
        match (frozen, needed) {
            (true, _) => Statistics::Frozen,
            (false, true) => Statistics::Running(vec![Moments::default(); spec.numeric.len()]),
            (false, false) => Statistics::Unused,
        }
    }

    /// Which, in words, per pipeline key (logged at the start).
    pub fn describe(&self, p: &Pipeline) -> String {
        let how = match self {
            Statistics::Frozen => "frozen from --init-model",
            Statistics::Running(_) => "running: exact moments of every row so far",
            Statistics::Unused => return "none needed (no standardize, no mean fill)".into(),
        };
        let mut keys = Vec::new();
        if p.data.standardize {
            keys.push("data.standardize");
        }
        if p.data.on_missing == OnMissing::Mean {
            keys.push("data.on_missing = \"mean\"");
        }
        format!("{}: {how}", keys.join(", "))
    }
}

/// A batch being sent.
struct Cut {
    index: u64,
    arrivals: Vec<Arrival>,
    /// Row offset of each arrival inside the batch.
    offsets: Vec<usize>,
    rows: usize,
    steps_per_pass: u64,
    /// Steps sent so far (over every pass).
    sent: u64,
    /// A new spec, sent with the batch's first step.
    spec: Option<Arc<FeatureSpec>>,
}

impl Cut {
    /// The rows `[from, to)` of the batch, as pieces.
    fn pieces(&self, from: usize, to: usize) -> Vec<Piece> {
        let mut out = Vec::new();
        let first = self
            .offsets
            .partition_point(|&o| o <= from)
            .saturating_sub(1);
        for (a, &off) in self.arrivals.iter().zip(&self.offsets).skip(first) {
            let n = a.batch.num_rows();
            if off >= to {
                break;
            }
            let (lo, hi) = (from.max(off), to.min(off + n));
            if lo < hi {
                out.push(Piece {
                    rows: Rows(a.batch.slice(lo - off, hi - lo)),
                    origin: a.origin.clone(),
                    file_row: a.file_row + (lo - off) as u64,
                });
            }
        }
        out
    }
}

/// What the leader knows of the stream.
pub struct Leader {
    feed: Feed,
    live: bool,
    batch_rows: usize,
    batch_seconds: Option<Duration>,
    passes: u32,
    step_rows: usize,
    workers: usize,
    sharing: Sharing,
    carry: VecDeque<Arrival>,
    carry_rows: usize,
    first_arrival: Option<Instant>,
    ended: bool,
    /// The statistics.
    pub stats: Statistics,
    /// The spec of the batch last cut.
    pub spec: FeatureSpec,
    /// Batches cut so far.
    pub batches: u64,
    /// Rows in the batches cut so far (the source's position).
    pub rows: u64,
    /// The file of the last row cut (its name) and the rows of it cut.
    pub file: Option<(String, u64)>,
    /// The next global step.
    pub step: u64,
    batch: Option<Cut>,
    start: Option<Arc<Start>>,
    standardize: bool,
    first_batch: u64,
    /// The rows of the batch last cut, until taken (predictions keep
    /// columns of them).
    pub fresh: Vec<arrow::record_batch::RecordBatch>,
}

/// Where a leader starts: after `batches` batches, `rows` rows and
/// `step` steps, with this spec and these statistics.
pub struct Position {
    /// Batches done.
    pub batches: u64,
    /// Rows done.
    pub rows: u64,
    /// The file of the last row done, and the rows of it read.
    pub file: Option<(String, u64)>,
    /// Steps done.
    pub step: u64,
}

impl Leader {
    /// A leader over `feed` for `p` on `workers` workers, starting every
    /// worker at `start`.
    #[allow(clippy::too_many_arguments)] // the source, the workers and where it starts
    pub fn new(
        p: &Pipeline,
        feed: Feed,
        live: bool,
        workers: usize,
        sharing: Sharing,
        start: Start,
        stats: Statistics,
        at: Position,
    ) -> Leader {
        let step_rows = p.optimizer.first_order().map_or(1, |f| f.batch_size.max(1));
        Leader {
            feed,
            live,
            batch_rows: p.stream.batch_rows.max(1),
            batch_seconds: p.stream.batch_seconds.map(Duration::from_secs_f64),
            passes: p.stream.passes.max(1),
            step_rows,
            workers,
            sharing,
            carry: VecDeque::new(),
            carry_rows: 0,
            first_arrival: None,
            ended: false,
            stats,
            spec: start.spec.clone(),
            batches: at.batches,
            rows: at.rows,
            file: at.file,
            step: at.step,
            batch: None,
            start: Some(Arc::new(start)),
            standardize: p.data.standardize,
            first_batch: at.batches,
            fresh: Vec::new(),
        }
    }

    /// True once the source has ended and every batch was sent.
    pub fn done(&self) -> bool {
        self.ended && self.carry_rows == 0 && self.batch.is_none()
    }

    /// Rows taken from the source and not yet cut into a batch.
    pub fn held(&self) -> usize {
        self.carry_rows
    }

    /// True while a batch has steps left to send.
    pub fn sending(&self) -> bool {
        self.batch.is_some()
    }

    /// Sends the steps the window allows (`applied`: the next step the
    /// leader's replica will apply), cutting a new batch first if
    /// `may_cut` (the previous batch has ended). Returns the messages.
    /// A batch's last step says whether a snapshot follows it:
    /// `snapshot_due(batch)`.
    pub fn next_steps(
        &mut self,
        applied: u64,
        may_cut: bool,
        snapshot_due: &dyn Fn(u64) -> bool,
    ) -> Result<Vec<StepIn>> {
        let mut out = Vec::new();
        if self.batch.is_none() && may_cut && !self.done() {
            self.cut()?;
        }
        let lookahead = self.sharing.lookahead(self.workers);
        while self.step < applied + lookahead {
            let Some(cut) = self.batch.as_mut() else {
                break;
            };
            let total = cut.steps_per_pass * u64::from(self.passes);
            let k = cut.sent % cut.steps_per_pass;
            let pass = cut.sent / cut.steps_per_pass;
            let from = (k as usize) * self.step_rows;
            let to = (from + self.step_rows).min(cut.rows);
            let last = cut.sent + 1 == total;
            let barrier = last || self.sharing.syncs_after(cut.sent);
            let snapshot = last && snapshot_due(cut.index);
            let spec = if cut.sent == 0 { cut.spec.take() } else { None };
            let chunks = (to - from).div_ceil(CHUNK_ROWS);
            // By the step's place in its batch, not its global number: empty
            // steps between batches (an idle source's) must not move it.
            let trainer = self.sharing.trainer(cut.sent, self.workers);
            for w in 0..self.workers {
                // Each worker its share of the chunks, one worker all of
                // them (local replicas), or every worker all (blocks).
                let (first, end) = match trainer {
                    _ if self.sharing.every_row() => (0, chunks),
                    None => (chunks * w / self.workers, chunks * (w + 1) / self.workers),
                    Some(t) if t == w => (0, chunks),
                    Some(_) => (0, 0),
                };
                out.push(StepIn {
                    to: w as u32,
                    step: self.step,
                    batch: cut.index,
                    last_in_batch: last,
                    barrier,
                    snapshot,
                    score: pass == 0,
                    chunks: (first..end)
                        .map(|c| {
                            let lo = from + c * CHUNK_ROWS;
                            cut.pieces(lo, (lo + CHUNK_ROWS).min(to))
                        })
                        .collect(),
                    start: self.start.clone(),
                    spec: spec.clone(),
                    failure: None,
                });
            }
            self.start = None;
            self.step += 1;
            cut.sent += 1;
            if last {
                self.batch = None;
            }
        }
        Ok(out)
    }

    /// True once the first step (with the start) was sent.
    pub fn started(&self) -> bool {
        self.start.is_none()
    }

    /// An empty step for every worker: while the source is idle, it
    /// carries a stop request from any process to the leader (an empty
    /// step changes nothing in the model).
    pub fn heartbeat(&mut self) -> Vec<StepIn> {
        self.empty_step(None, false)
    }

    /// Tells every worker that the stream failed with `f`, at the next step.
    pub fn failed(&mut self, f: &Failure) -> Vec<StepIn> {
        self.empty_step(Some(f.clone()), false)
    }

    /// An empty step after which a snapshot follows: the last one, of a
    /// stream whose last batch end published none.
    pub fn before_snapshot(&mut self) -> Vec<StepIn> {
        self.empty_step(None, true)
    }

    /// A step without rows for every worker, carrying `failure` if given.
    fn empty_step(&mut self, failure: Option<Failure>, snapshot: bool) -> Vec<StepIn> {
        let step = self.step;
        self.step += 1;
        (0..self.workers)
            .map(|w| StepIn {
                to: w as u32,
                step,
                batch: self.batches,
                last_in_batch: false,
                // Nothing runs ahead of an empty step: the leader waits
                // for it to be applied.
                barrier: true,
                snapshot,
                score: false,
                chunks: Vec::new(),
                start: None,
                spec: None,
                failure: failure.clone(),
            })
            .collect()
    }

    /// Takes rows from the source into the next batch, if one is complete
    /// (or, on a live source, due by time, or the last).
    fn cut(&mut self) -> Result<()> {
        let wait = Duration::from_millis(if self.live { 20 } else { 0 });
        while self.carry_rows < self.batch_rows && !self.ended {
            // A live batch due by time, or a stop, ends the wait.
            let due = match (self.batch_seconds, self.first_arrival) {
                (Some(limit), Some(at)) => self.live && at.elapsed() >= limit,
                _ => false,
            };
            if due || crate::io::signals::stop_requested().is_some() {
                break;
            }
            match self.feed.poll(wait)? {
                Poll::Rows(a) => {
                    if a.batch.num_rows() == 0 {
                        continue;
                    }
                    self.first_arrival.get_or_insert_with(Instant::now);
                    self.carry_rows += a.batch.num_rows();
                    self.carry.push_back(a);
                }
                Poll::Idle => break,
                Poll::End => self.ended = true,
            }
        }
        let due_by_time = match (self.batch_seconds, self.first_arrival) {
            (Some(limit), Some(at)) => self.live && at.elapsed() >= limit,
            _ => false,
        };
        let complete = self.carry_rows >= self.batch_rows
            || (self.carry_rows > 0 && (self.ended || due_by_time));
        if !complete {
            return Ok(());
        }
        let take = self.carry_rows.min(self.batch_rows);
        let mut arrivals = Vec::new();
        let mut offsets = Vec::new();
        let mut have = 0;
        while have < take {
            let Some(mut a) = self.carry.pop_front() else {
                break;
            };
            let n = a.batch.num_rows();
            let want = take - have;
            if n > want {
                let rest = Arrival {
                    batch: a.batch.slice(want, n - want),
                    origin: a.origin.clone(),
                    file_row: a.file_row + want as u64,
                };
                a.batch = a.batch.slice(0, want);
                self.carry.push_front(rest);
            }
            offsets.push(have);
            have += a.batch.num_rows();
            arrivals.push(a);
        }
        self.carry_rows -= have;
        self.first_arrival = (self.carry_rows > 0).then(Instant::now);
        let spec = self.statistics(&arrivals)?;
        self.fresh = arrivals.iter().map(|a| a.batch.clone()).collect();
        if let Some(a) = arrivals.last() {
            let name = a
                .origin
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            self.file = Some((name, a.file_row + a.batch.num_rows() as u64));
        }
        let steps_per_pass = have.div_ceil(self.step_rows) as u64;
        self.batch = Some(Cut {
            index: self.batches,
            arrivals,
            offsets,
            rows: have,
            steps_per_pass,
            sent: 0,
            spec,
        });
        self.batches += 1;
        self.rows += have as u64;
        Ok(())
    }

    /// Running statistics: extends the moments by the batch's rows and
    /// returns the spec they make; `None` if the spec stays as it is.
    fn statistics(&mut self, arrivals: &[Arrival]) -> Result<Option<Arc<FeatureSpec>>> {
        let Statistics::Running(moments) = &mut self.stats else {
            return Ok(None);
        };
        let mut raw_spec = self.spec.clone();
        // The numeric columns only: nothing is hashed twice.
        raw_spec.categorical.clear();
        raw_spec.crosses.clear();
        for f in &mut raw_spec.numeric {
            f.fill = f64::NAN;
        }
        if raw_spec.on_missing == OnMissing::Mean {
            raw_spec.on_missing = OnMissing::Zero;
        }
        let p = raw_spec.numeric.len();
        for a in arrivals {
            let origin = Origin {
                file: &a.origin,
                row_group: None,
                first_row: a.file_row,
            };
            let block = decode_raw(&a.batch, &raw_spec, LabelUse::Skip, &origin)?;
            for row in block.raw.chunks_exact(p.max(1)).take(block.rows) {
                for (m, &x) in moments.iter_mut().zip(row) {
                    if x.is_finite() {
                        m.push(x);
                    }
                }
            }
        }
        let (standardize, mean_fill) = (self.standardize, self.spec.on_missing == OnMissing::Mean);
        for (f, m) in self.spec.numeric.iter_mut().zip(moments.iter()) {
            if m.n == 0 {
                continue;
            }
            if mean_fill {
                f.fill = m.mean();
            }
            if standardize {
                f.center = m.mean();
                let sd = m.std();
                f.scale = if sd > 0.0 { sd } else { 1.0 };
            }
        }
        let first = self
            .start
            .as_ref()
            .is_some_and(|_| self.batches == self.first_batch);
        if first {
            // The first batch's spec travels in the start.
            if let Some(start) = self.start.as_mut() {
                Arc::make_mut(start).spec = self.spec.clone();
            }
            return Ok(None);
        }
        Ok(Some(Arc::new(self.spec.clone())))
    }
}
