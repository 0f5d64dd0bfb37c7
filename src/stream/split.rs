//! `model-parallel` streams: the features and their weights are cut into
//! one block per worker ([`FeatureBlock`], as the batch strategy cuts
//! them); each worker holds and steps only its block ([`Split`]).
//!
//! Every worker receives every row of a step (the leader sends each one
//! all the step's chunks) and decodes only its block's columns. One step:
//!
//! 1. [`Split::margins`] (the steps operator): each row's partial margins
//!    over the block's weights, every term rounded to fixed point
//!    ([`Exact`]) and summed exactly;
//! 2. the partial margins go to every worker (16 bytes per row and output
//!    from each worker, in place of allreduce's gradient partials);
//! 3. [`apply`] (the apply operator): every worker sums them exactly into
//!    the rows' margins, which are then the same bits on every worker and
//!    for any cut of the features into blocks; from them the loss and
//!    `∂loss/∂margin` of each row, its block's exact gradient and its
//!    optimizer step. Worker 0 also scores the rows from those margins,
//!    before the step (progressive validation, predictions).
//!
//! At every batch end each worker sends its block's state to worker 0
//! ([`blocks::encode`]), which puts the whole model together
//! ([`blocks::merge`], [`Whole`]): the snapshots are ordinary model files,
//! and a checkpoint holds the whole model, which a resumed stream cuts
//! into its own blocks again ([`blocks::split`]), on any worker count.
//!
//! The arithmetic is a whole-model replica's ([`super::replica`]) except
//! for the margins: a replica sums a row's terms in `f64` in column order,
//! a block cannot (its columns are a slice of them), so here the terms are
//! summed exactly and rounded once. Given the margins, each coordinate's
//! gradient (each chunk's sum rounded once), optimizer step, lazy update
//! and flush are the replica's, bit for bit.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::engine::{BatchEnd, GradOut, Scores, Shared};
use super::publish::WholeModel;
use super::replica::ReplicaState;
use crate::data::encode::{Block, FeatureSpec};
use crate::dataflow::margins::BlockState;
use crate::dataflow::snapshot::{Part, PartOf};
use crate::dataflow::{bound_message, loss_message, Failure};
use crate::error::{Error, Result};
use crate::exact::{self, Bound, Exact, Wide};
use crate::metrics::EvalPartial;
use crate::model::block::FeatureBlock;
use crate::model::{loss, predict_from_margins, Layout, LinearModel, Model};
use crate::optim::lazy::{Clock, Lazy, Stamp};
use crate::optim::{update, FirstOrderState, LiveSet, Penalty};
use crate::spec::{ModelKind, OnMissing, OptimizerSpec, Pipeline};
use crate::strategy::blocks;
use crate::strategy::snapshot::{DriverState, Saved as BatchSaved, Stored, PAYLOAD_VERSION};

/// For each input row of a chunk, its row in the decoded block (`None`:
/// dropped under `on_missing = "skip_row"`).
pub type RowMap = Vec<Option<usize>>;

/// A worker's block at a batch end, for worker 0 (or why there is none).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlockAt {
    /// The batch's last step.
    pub step: u64,
    /// The worker.
    pub worker: u32,
    /// Its block's state ([`blocks::encode`]), or the failure that stopped
    /// it at that step.
    pub part: std::result::Result<Part, Failure>,
}

/// One worker's block of a model-parallel stream: its weights and
/// optimizer state, stepped from the exact sums of every worker's partial
/// margins.
pub struct Split {
    index: usize,
    peers: usize,
    block: FeatureBlock,
    /// What the worker decodes: its block's columns, or every column under
    /// `on_missing = "skip_row"` (which rows are dropped depends on all of
    /// them), cut to the block's afterwards.
    decode: FeatureSpec,
    full: bool,
    kind: ModelKind,
    optimizer: OptimizerSpec,
    penalty: Penalty,
    fit_intercept: bool,
    theta: Vec<f64>,
    opt: FirstOrderState,
    live: LiveSet,
    lazy: Option<Lazy>,
    clock: Clock,
    steps: u64,
    /// One chunk's gradient in `f64` (zero outside it), and the hashed
    /// coordinates it added to.
    grad: Vec<f64>,
    chunk_touched: Vec<usize>,
    /// The step's exact gradient, each chunk's sums rounded once, with the
    /// total magnitude behind each coordinate's sum, and the hashed
    /// coordinates it holds.
    acc: Vec<Exact>,
    bound: Vec<Bound>,
    touched: Vec<usize>,
    /// Lazy updates: weights read at their current value, and put back.
    peeked: Vec<(usize, f64)>,
    seen: Vec<bool>,
    /// The step in flight: its rows by chunk (the block's columns), the
    /// input rows they came from, and whether they are scored.
    rows: Vec<Block>,
    maps: Vec<RowMap>,
    score: bool,
    /// Worker 0: the blocks of a batch end, and the whole model.
    gather: Gather,
}

/// Worker 0's side of a batch end: it waits for every block.
#[derive(Default)]
struct Gather {
    /// The step whose blocks are awaited, with the batch that ends there
    /// (none: the empty step before a last snapshot).
    pending: Option<(u64, Option<BatchEnd>)>,
    /// The step the whole model was put together at (none: the start's).
    at: Option<u64>,
    /// Blocks by step, as they arrive.
    parts: BTreeMap<u64, Vec<BlockAt>>,
    /// The whole model at the last batch end (at the start, before one).
    whole: Option<Whole>,
}

impl Split {
    /// Worker `index` of `peers`' block of `pipeline`'s model over `spec`,
    /// cut from the whole model's `state`.
    pub fn new(
        pipeline: &Pipeline,
        spec: &FeatureSpec,
        state: &ReplicaState,
        index: usize,
        peers: usize,
    ) -> Result<Split> {
        let kind = pipeline.model.kind;
        let optimizer = pipeline.optimizer;
        if optimizer.first_order().is_none() {
            return Err(Error::PipelineValue {
                key: "optimizer.kind".into(),
                message: "stream takes online steps: use sgd, adagrad, ftrl, momentum or adam (L-BFGS needs the whole data at once)".into(),
            });
        }
        let layout = Layout::new(kind, spec);
        if state.theta.len() != layout.len() {
            return Err(Error::Internal(format!(
                "a stream's model of {} parameters was given {}",
                layout.len(),
                state.theta.len()
            )));
        }
        let block = FeatureBlock::split(layout, peers)
            .into_iter()
            .nth(index)
            .ok_or_else(|| {
                Error::Internal(format!("worker {index} of {peers} has no feature block"))
            })?;
        let lazy = block.steps_lazily(&optimizer);
        let cut = blocks::split(
            &as_checkpoint(state, peers),
            &block,
            lazy && state.lazy.is_some(),
        )?;
        let penalty = Penalty {
            l2: pipeline.model.l2,
            l1: pipeline.model.l1,
        };
        let clock = match lazy {
            true => Clock::from_stamps(state.clock.clone()),
            false => Some(Clock::default()),
        }
        .ok_or_else(|| Error::Internal("a stream state's lazy clock is not whole".into()))?;
        let len = block.len();
        let (full, decode) = decoding(&block, spec);
        let mut split = Split {
            index,
            peers,
            decode,
            full,
            kind,
            optimizer,
            penalty,
            fit_intercept: pipeline.model.fit_intercept,
            theta: cut.theta,
            opt: cut.opt,
            live: LiveSet::from_indices(&cut.live),
            lazy: lazy.then(|| {
                let fresh = Lazy::new(&optimizer, penalty);
                match cut.lazy {
                    Some(last) => fresh.resumed(last),
                    None => fresh,
                }
            }),
            clock,
            steps: state.steps,
            grad: vec![0.0; len],
            chunk_touched: Vec::new(),
            acc: vec![Exact::default(); len],
            bound: vec![Bound::default(); len],
            touched: Vec::new(),
            peeked: Vec::new(),
            seen: vec![false; len],
            rows: Vec::new(),
            maps: Vec::new(),
            score: false,
            gather: Gather::default(),
            block,
        };
        if index == 0 {
            split.gather.whole = Some(Whole::of(kind, layout, state));
        }
        Ok(split)
    }

    /// The feature spec is now `spec` (running statistics).
    pub fn respec(&mut self, spec: &FeatureSpec) {
        (self.full, self.decode) = decoding(&self.block, spec);
    }

    /// The spec the step's rows are decoded with.
    pub fn decode_spec(&self) -> &FeatureSpec {
        &self.decode
    }

    /// The whole model (worker 0), as of the last batch end.
    pub fn whole(&self) -> Option<&Whole> {
        self.gather.whole.as_ref()
    }

    /// The step [`Split::whole`] was put together at (`None`: the start).
    pub fn whole_at(&self) -> Option<u64> {
        self.gather.at
    }

    /// This worker's partial margins of a step's rows (`chunks`, decoded
    /// with [`Split::decode_spec`]; `maps` from their input rows), row-major
    /// rows × outputs. The rows are kept for [`apply`], which scores them
    /// if `score`.
    pub fn margins(
        &mut self,
        chunks: Vec<Block>,
        maps: Vec<RowMap>,
        score: bool,
    ) -> std::result::Result<Vec<Exact>, String> {
        let chunks: Vec<Block> = match self.full {
            true => chunks.into_iter().map(|b| self.cut(b)).collect(),
            false => chunks,
        };
        let k = self.block.layout.k;
        let mut out = Vec::with_capacity(chunks.iter().map(|b| b.rows).sum::<usize>() * k);
        for b in &chunks {
            self.peek(b);
            let done = self.chunk_margins(b, &mut out);
            self.unpeek();
            done?;
        }
        self.rows = chunks;
        self.maps = maps;
        self.score = score;
        Ok(out)
    }

    /// Rows decoded with every column, cut to the block's.
    fn cut(&self, mut full: Block) -> Block {
        let (p, r) = (full.p, self.block.numeric.clone());
        let dense = (0..full.rows)
            .flat_map(|i| full.dense[i * p + r.start..i * p + r.end].iter().copied())
            .collect();
        let keep_hashed = !self.block.hashed.is_empty();
        Block {
            rows: full.rows,
            p: r.len(),
            dense,
            raw: Vec::new(),
            c: if keep_hashed { full.c } else { 0 },
            hashed: if keep_hashed {
                std::mem::take(&mut full.hashed)
            } else {
                Vec::new()
            },
            signs: if keep_hashed {
                std::mem::take(&mut full.signs)
            } else {
                Vec::new()
            },
            label: full.label,
            tokens: Vec::new(),
            file_row: full.file_row,
            weight: full.weight,
        }
    }

    /// The partial margins of every row of `b`, appended to `out`.
    fn chunk_margins(&self, b: &Block, out: &mut Vec<Exact>) -> std::result::Result<(), String> {
        let block = &self.block;
        let k = block.layout.k;
        let width = block.len() / k.max(1);
        let p_w = block.numeric.len();
        let range = block.hashed.clone();
        let term = |m: &mut Exact, v: f64, i: usize| {
            if v != 0.0 {
                *m += Exact::from_f64(v).ok_or_else(|| {
                    format!(
                        "a margin term is {v:e} on file row {}: not finite, or beyond the {:e} that exact margin sums hold (the weights overflow: lower optimizer.learning_rate, or set data.standardize = true)",
                        b.file_row.get(i).unwrap_or(0),
                        exact::LIMIT
                    )
                })?;
            }
            Ok::<(), String>(())
        };
        for i in 0..b.rows {
            let x = &b.dense[i * b.p..(i + 1) * b.p];
            let h = &b.hashed[i * b.c..(i + 1) * b.c];
            let s = &b.signs[i * b.c..(i + 1) * b.c];
            for kk in 0..k {
                let w = &self.theta[kk * width..(kk + 1) * width];
                let mut m = Exact::default();
                if block.intercept {
                    term(&mut m, w[0], i)?;
                }
                for (wj, &xj) in w[1..1 + p_w].iter().zip(x) {
                    term(&mut m, wj * xj as f64, i)?;
                }
                for (&hj, &sj) in h.iter().zip(s) {
                    let hj = hj as usize;
                    if range.contains(&hj) {
                        term(&mut m, w[1 + p_w + hj - range.start] * sj as f64, i)?;
                    }
                }
                out.push(m);
            }
        }
        Ok(())
    }

    /// Puts into the block the current value of every weight the rows of
    /// `b` read (lazy updates whose weights move while untouched), keeping
    /// the stored ones for [`Split::unpeek`], as a replica does.
    fn peek(&mut self, b: &Block) {
        let Some(lazy) = self.lazy.as_ref().filter(|l| l.drift().moves()) else {
            return;
        };
        let (drift, last, now) = (lazy.drift(), lazy.current_at(), self.clock.now());
        for i in 0..b.rows {
            for j in self.block.hashed_coords(b, i) {
                let t = last.get(j).copied().unwrap_or(0);
                if t >= now.t || self.seen[j] {
                    continue;
                }
                self.seen[j] = true;
                let stored = self.theta[j];
                let (m, v) = (
                    self.opt.m.get(j).copied().unwrap_or(0.0),
                    self.opt.v.get(j).copied().unwrap_or(0.0),
                );
                let penalised = !self.block.is_intercept(j);
                self.theta[j] = drift.read(stored, &self.clock.at(t), &now, || (m, v), penalised);
                self.peeked.push((j, stored));
            }
        }
    }

    /// Puts back the stored values [`Split::peek`] replaced.
    fn unpeek(&mut self) {
        for (j, stored) in self.peeked.drain(..) {
            self.theta[j] = stored;
            self.seen[j] = false;
        }
    }

    /// Step `step` of batch `batch` from the rows' summed `margins`: scores
    /// the rows into `eval` and `predictions` if the step is scored, adds
    /// each chunk's gradient of the block (rounded once) and steps the
    /// block. Returns the exact loss sum and the rows.
    fn step(
        &mut self,
        margins: &[Exact],
        batch: u64,
        step: u64,
        mut eval: Option<&mut EvalPartial>,
        mut predictions: Option<&mut Vec<Option<Vec<f64>>>>,
    ) -> Result<(Wide, u64)> {
        let epoch = u32::try_from(batch).unwrap_or(u32::MAX);
        let diverged = |message: String| Error::Diverged {
            epoch,
            step,
            message,
        };
        let (kind, k) = (self.kind, self.block.layout.k);
        let chunks = std::mem::take(&mut self.rows);
        let maps = std::mem::take(&mut self.maps);
        let margins: Vec<f64> = margins.iter().map(|m| m.to_f64()).collect();
        let (mut loss, mut rows, mut at) = (Wide::default(), 0u64, 0usize);
        let mut dm = vec![0.0; k];
        for (c, b) in chunks.iter().enumerate() {
            let mine = &margins[at * k..(at + b.rows) * k];
            at += b.rows;
            if self.score {
                if let Some(e) = eval.as_deref_mut() {
                    let mut part = EvalPartial::with_label_ref(Some(0.0));
                    part.add_rows(
                        kind,
                        k,
                        b.rows,
                        |i, out| out.copy_from_slice(&mine[i * k..(i + 1) * k]),
                        |i| b.label.at(i),
                    );
                    e.merge(part);
                }
                if let (Some(p), Some(map)) = (predictions.as_deref_mut(), maps.get(c)) {
                    p.extend(map.iter().map(|r| {
                        r.map(|i| {
                            let mut out = mine[i * k..(i + 1) * k].to_vec();
                            predict_from_margins(kind, &mut out);
                            out
                        })
                    }));
                }
            }
            if b.rows == 0 {
                continue;
            }
            let mut loss_sum = 0.0;
            for i in 0..b.rows {
                loss_sum +=
                    loss::loss_and_grad(kind, &mine[i * k..(i + 1) * k], b.label.at(i), &mut dm);
                self.block
                    .add_gradient(b, i, &dm, &mut self.grad, &mut self.chunk_touched);
            }
            self.round_chunk().map_err(diverged)?;
            loss += Wide::from_f64(loss_sum).ok_or_else(|| diverged(loss_message(loss_sum)))?;
            rows += b.rows as u64;
        }
        if rows > 0 {
            self.optimize(rows, epoch, step)?;
        }
        Ok((loss, rows))
    }

    /// Rounds a chunk's gradient once into the step's exact sums, as a
    /// replica's `accumulate` does.
    fn round_chunk(&mut self) -> std::result::Result<(), String> {
        let (block, grad) = (&self.block, &mut self.grad);
        let (acc, bound) = (&mut self.acc, &mut self.bound);
        let overflow = |i: usize, g: f64| {
            format!(
                "the gradient of component {} summed over a unit's rows is {g:e}: not finite, or beyond the {:e} exact sums hold (rescale the feature or label, or set data.standardize = true)",
                block.global(i).unwrap_or(i),
                exact::LIMIT
            )
        };
        let mut add = |i: usize, g: f64| -> std::result::Result<bool, String> {
            if g == 0.0 {
                return Ok(false);
            }
            let v = Exact::from_f64(g).ok_or_else(|| overflow(i, g))?;
            acc[i] += v;
            bound[i] += v.magnitude();
            Ok(true)
        };
        for i in block.dense_indices() {
            add(i, std::mem::take(&mut grad[i]))?;
        }
        for &i in &self.chunk_touched {
            if add(i, std::mem::take(&mut grad[i]))? {
                self.touched.push(i);
            }
        }
        self.chunk_touched.clear();
        Ok(())
    }

    /// One optimizer step of the block from the step's exact gradient over
    /// `rows` rows: a replica's step, restricted to the block.
    fn optimize(&mut self, rows: u64, epoch: u32, step: u64) -> Result<()> {
        let mut touched = std::mem::take(&mut self.touched);
        touched.extend(self.block.dense_indices());
        touched.sort_unstable();
        touched.dedup();
        // Each coordinate's sum is exact while its own partials' magnitudes
        // stay in range: the same test on any cut of the model.
        let worst = touched
            .iter()
            .map(|&i| self.bound[i])
            .max()
            .unwrap_or_default();
        let frozen = !self.fit_intercept;
        for &i in &touched {
            let g = std::mem::take(&mut self.acc[i]).to_f64();
            self.bound[i] = Bound::default();
            self.grad[i] = update::mean(g, rows, frozen && self.block.is_intercept(i));
        }
        if !worst.holds() {
            touched.iter().for_each(|&i| self.grad[i] = 0.0);
            return Err(Error::Diverged {
                epoch,
                step,
                message: bound_message(worst),
            });
        }
        let (block, grad) = (&self.block, &self.grad);
        touched.retain(|&i| grad[i] != 0.0 || block.is_dense(i));
        let step_args = update::Step {
            spec: &self.optimizer,
            lr: update::rate(&self.optimizer, self.steps, epoch),
            penalty: self.penalty,
        };
        let dense = |i: usize| block.is_dense(i);
        let visit = update::Visit::own_clock(
            step_args,
            self.lazy.as_mut(),
            &mut self.clock,
            &mut touched,
            &dense,
        );
        let bad = update::apply(
            step_args,
            &mut self.theta,
            &mut self.grad,
            &mut self.opt,
            &mut self.live,
            visit,
            |i| !block.is_intercept(i),
        );
        self.steps += 1;
        touched.clear();
        self.touched = touched;
        match bad {
            Some(i) => Err(update::diverged(
                epoch,
                step,
                block.global(i).unwrap_or(i),
                self.theta[i],
            )),
            None => Ok(()),
        }
    }

    /// Brings every weight of the block up to the last step (a batch end).
    fn flush(&mut self) {
        if let Some(lazy) = self.lazy.as_mut() {
            let block = &self.block;
            lazy.flush(
                &self.optimizer,
                &mut self.theta,
                &mut self.opt,
                &self.clock,
                self.live.indices(),
                |i| !block.is_intercept(i),
            );
            let now = self.clock.now().t;
            self.clock.forget_before(now);
        }
    }

    /// The block's state for worker 0 at the batch end at `step` (after
    /// [`Split::flush`]).
    fn part(&self, step: u64) -> Part {
        let state = BlockState {
            epoch: 0,
            done: false,
            theta: self.theta.clone(),
            opt: self.opt.clone(),
            best: None,
            live: self.live.indices().to_vec(),
            lazy: self.lazy.as_ref().map(|l| l.current_at().to_vec()),
            clock: self.clock.stamps(),
            steps: self.steps,
            next: None,
            epoch_loss: Wide::default(),
            epoch_rows: 0,
        };
        Part {
            position: step,
            epoch: 0,
            worker: self.index as u32,
            of: PartOf::Owner,
            bytes: blocks::encode(&self.block, self.index, &state),
        }
    }
}

/// Whether a worker decodes every column (`on_missing = "skip_row"`: which
/// rows are dropped depends on all of them), and the spec it decodes with.
fn decoding(block: &FeatureBlock, spec: &FeatureSpec) -> (bool, FeatureSpec) {
    match spec.on_missing {
        OnMissing::SkipRow => (true, spec.clone()),
        _ => (false, block.spec(spec)),
    }
}

/// The whole model's state as a batch `model-parallel` checkpoint holds
/// it: what [`blocks::split`] cuts into blocks.
fn as_checkpoint(state: &ReplicaState, workers: usize) -> BatchSaved {
    let len = state.theta.len();
    let lazy = state.lazy.as_ref().map(|l| {
        let mut l = l.clone();
        l.resize(len, 0);
        l
    });
    BatchSaved {
        version: PAYLOAD_VERSION,
        identity: String::new(),
        strategy: "model-parallel".into(),
        workers: u32::try_from(workers).unwrap_or(u32::MAX),
        scan: Default::default(),
        collector: Default::default(),
        replicas: Vec::new(),
        shards: vec![Stored::of(
            0,
            &state.theta,
            &state.opt,
            None,
            &state.live,
            lazy.as_deref(),
            None,
        )],
        driver: DriverState {
            epoch: 0,
            objective: None,
            done: false,
            steps: state.steps,
            clock: state.clock.clone(),
            lbfgs: None,
            next: None,
            epoch_loss: Wide::default(),
            epoch_rows: 0,
        },
        sharded_lbfgs: None,
    }
}

/// The whole model of a model-parallel stream, put together on worker 0
/// at a batch end: what snapshots and checkpoints are made of.
pub struct Whole {
    model: LinearModel,
    stored: Stored,
    clock: Vec<Stamp>,
    steps: u64,
}

impl Whole {
    /// The whole model in `state` (the stream's start).
    fn of(kind: ModelKind, layout: Layout, state: &ReplicaState) -> Whole {
        let stored = stored(
            layout,
            &state.theta,
            &state.opt,
            &state.live,
            state.lazy.as_deref(),
        );
        Whole {
            model: LinearModel {
                kind,
                layout,
                theta: state.theta.clone(),
            },
            stored,
            clock: state.clock.clone(),
            steps: state.steps,
        }
    }

    /// The blocks of every worker (in worker order) put together.
    fn merge(kind: ModelKind, layout: Layout, parts: &[Part]) -> Result<Whole> {
        let (all, driver) = blocks::merge(layout.len(), parts)?;
        let stored = stored(
            layout,
            &all.params,
            &all.state,
            &all.live,
            all.lazy.as_deref(),
        );
        Ok(Whole {
            model: LinearModel {
                kind,
                layout,
                theta: all.params,
            },
            stored,
            clock: driver.clock,
            steps: driver.steps,
        })
    }
}

/// The state as a checkpoint keeps it: only the live and dense
/// coordinates are looked at (as a replica's `stored`).
fn stored(
    layout: Layout,
    theta: &[f64],
    opt: &FirstOrderState,
    live: &[usize],
    lazy: Option<&[u64]>,
) -> Stored {
    let mut candidates: Vec<usize> = live.to_vec();
    candidates.extend(layout.dense_indices());
    candidates.sort_unstable();
    candidates.dedup();
    Stored::of(0, theta, opt, None, live, lazy, Some(&candidates))
}

impl WholeModel for Whole {
    fn model(&self) -> &dyn Model {
        &self.model
    }

    fn stored(&self) -> (Stored, Vec<Stamp>, u64) {
        (self.stored.clone(), self.clock.clone(), self.steps)
    }
}

/// Applies step `t` on a model-parallel worker from every worker's partial
/// margins (`msgs`, none failed): the block's step, the batch's loss and
/// (worker 0) its progressive validation and, with `predict`, the rows'
/// predictions. At a batch end, returns the block for worker 0; worker 0
/// ends the batch once every block is in ([`gathered`]).
pub fn apply(s: &mut Shared, t: u64, msgs: Vec<GradOut>, predict: bool) -> Option<BlockAt> {
    let Some(split) = s.split.as_mut() else {
        s.failure
            .get_or_insert(Failure::from(&Error::Internal(format!(
                "stream step {t} applied before the start"
            ))));
        s.next = t + 1;
        return None;
    };
    let (batch, last, snapshot) = msgs.first().map_or((0, false, false), |m| {
        (m.batch, m.last_in_batch, m.snapshot)
    });
    let leader = split.index == 0;
    let n = split.rows.iter().map(|b| b.rows).sum::<usize>() * split.block.layout.k;
    let mut sums = vec![Exact::default(); n];
    let mut result = if msgs.len() == split.peers {
        Ok(())
    } else {
        Err(Error::Internal(format!(
            "model-parallel stream step {t} with {} of {} workers' margins",
            msgs.len(),
            split.peers
        )))
    };
    for m in &msgs {
        match m.margins.as_deref() {
            Some(part) if part.len() == n => {
                sums.iter_mut().zip(part).for_each(|(a, &b)| *a += b);
            }
            other => {
                result = Err(Error::Internal(format!(
                    "model-parallel stream step {t}: worker {} sent {} partial margins, worker {} expects {n} (its rows differ)",
                    m.from,
                    other.map_or(0, <[Exact]>::len),
                    split.index
                )));
            }
        }
    }
    let mut eval = (leader && split.score).then(|| EvalPartial::with_label_ref(Some(0.0)));
    let mut rows = (leader && predict).then(Vec::new);
    let stepped = result.and_then(|()| split.step(&sums, batch, t, eval.as_mut(), rows.as_mut()));
    if let Some(rows) = rows {
        s.scores.entry(t).or_default().push(Scores {
            from: 0,
            step: t,
            rows,
        });
    }
    let worker = split.index as u32;
    let (loss, trained) = match stepped {
        Ok(done) => done,
        Err(e) => {
            let f = Failure::from(&e);
            s.failure.get_or_insert(f.clone());
            s.next = t + 1;
            // Worker 0 waits for every block of a snapshot's step.
            return snapshot.then_some(BlockAt {
                step: t,
                worker,
                part: Err(f),
            });
        }
    };
    if let Some(e) = eval {
        if s.eval.rows == 0 {
            s.eval = EvalPartial::with_label_ref(Some(0.0));
        }
        s.eval.merge(e);
    }
    s.loss += loss;
    s.trained += trained;
    if last {
        split.flush();
    }
    let end = last.then(|| s.end_batch(batch, t, snapshot));
    if !snapshot {
        // No snapshot follows: the blocks stay where they are.
        if let Some(end) = end.filter(|_| leader) {
            s.ends.push(end);
        }
        s.next = t + 1;
        return None;
    }
    let split = s.split.as_mut()?;
    let part = BlockAt {
        step: t,
        worker,
        part: Ok(split.part(t)),
    };
    if leader {
        // The step is done (and its batch ends) once every block is in.
        split.gather.pending = Some((t, end));
    } else {
        // Only the leader publishes.
        s.next = t + 1;
    }
    Some(part)
}

/// Worker 0 took worker `b.worker`'s block; once every block of the
/// pending batch end is in, the whole model is put together and the batch
/// ends. Returns true if it did (the steps operator then goes on).
pub fn gathered(s: &mut Shared, b: BlockAt) -> bool {
    let Some(split) = s.split.as_mut() else {
        return false;
    };
    let peers = split.peers;
    let g = &mut split.gather;
    g.parts.entry(b.step).or_default().push(b);
    let Some(t) = g.pending.as_ref().map(|(t, _)| *t) else {
        return false;
    };
    if g.parts.get(&t).map_or(0, Vec::len) < peers {
        return false;
    }
    let (Some((_, end)), Some(mut parts)) = (g.pending.take(), g.parts.remove(&t)) else {
        return false;
    };
    parts.sort_by_key(|p| p.worker);
    let merged = parts
        .into_iter()
        .map(|p| p.part)
        .collect::<std::result::Result<Vec<Part>, Failure>>()
        .and_then(|parts| {
            Whole::merge(split.kind, split.block.layout, &parts).map_err(|e| Failure::from(&e))
        });
    match merged {
        Ok(whole) => {
            split.gather.whole = Some(whole);
            split.gather.at = Some(t);
            if let Some(end) = end {
                s.ends.push(end);
            }
        }
        Err(f) => {
            s.failure.get_or_insert(f);
        }
    }
    s.next = t + 1;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exact margins: the same bits however the terms are cut into blocks.
    #[test]
    fn exact_margin_sums_do_not_depend_on_the_cut() {
        let terms: Vec<f64> = (0..40)
            .map(|i| ((i * 7919) % 1000) as f64 * 1e-3 - 0.5 + 1e-9 * i as f64)
            .collect();
        let sum = |ts: &[f64]| {
            ts.iter().fold(Exact::default(), |a, &t| {
                a + Exact::from_f64(t).unwrap_or_default()
            })
        };
        let whole = sum(&terms);
        for cut in [1, 3, 17, 39] {
            let (a, b) = terms.split_at(cut);
            assert_eq!(
                (sum(a) + sum(b)).to_f64().to_bits(),
                whole.to_f64().to_bits()
            );
        }
    }
}
