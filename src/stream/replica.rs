//! The model every worker of a stream holds whole: parameters and
//! optimizer state, stepped identically everywhere from the exact sum of
//! all workers' gradient partials, so every replica holds the same bits on
//! any worker count.
//!
//! Lazy updates keep their stored state the same on every worker too: a
//! worker that reads a weight its rows touch computes the weight's current
//! value from the stored one and the clock (`Replica::peek`) and puts the
//! stored value back afterwards, so what is stored changes only in
//! [`Replica::step`], which every worker takes alike. Every batch ends with
//! every weight brought up to date ([`Replica::flush`]).

use serde::{Deserialize, Serialize};

use super::sharing::{SparseState, SyncPart};
use crate::data::encode::{Block, FeatureSpec};
use crate::dataflow::{loss_message, Partial};
use crate::error::{Error, Result};
use crate::exact::{Bound, Exact, PagedSums, Wide};
use crate::metrics::EvalPartial;
use crate::model::{self, Model, Roles, Scratch};
use crate::optim::lazy::{Clock, Lazy, Stamp};
use crate::optim::{update, FirstOrderState, LiveSet, Penalty};
use crate::spec::{ModelKind, OptimizerSpec, Pipeline};

/// What a replica is at a batch boundary: what a checkpoint keeps and what
/// the other workers start from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaState {
    /// Parameters.
    pub theta: Vec<f64>,
    /// Optimizer state.
    pub opt: FirstOrderState,
    /// Coordinates that ever had a gradient, in the order they did.
    pub live: Vec<usize>,
    /// Lazy updates: the step each coordinate is current at.
    pub lazy: Option<Vec<u64>>,
    /// Lazy updates: the clock's stamps.
    pub clock: Vec<Stamp>,
    /// Optimizer steps so far.
    pub steps: u64,
}

impl ReplicaState {
    /// A copy that writes only the non-zero entries of its model-sized
    /// vectors, into memory allocated zeroed: a wide hashed model is mostly
    /// zeros on pages never touched, which a plain copy would touch all.
    pub fn sparse_copy(&self) -> ReplicaState {
        ReplicaState {
            theta: copy_nonzero(&self.theta),
            opt: FirstOrderState {
                t: self.opt.t,
                m: copy_nonzero(&self.opt.m),
                v: copy_nonzero(&self.opt.v),
            },
            live: self.live.clone(),
            lazy: self.lazy.as_deref().map(copy_nonzero_steps),
            clock: self.clock.clone(),
            steps: self.steps,
        }
    }
}

/// `v` copied bit for bit, writing only the entries whose bits are not
/// all zero (`-0.0` is written) into a vector allocated zeroed.
fn copy_nonzero(v: &[f64]) -> Vec<f64> {
    let mut out = vec![0.0; v.len()];
    for (o, &x) in out.iter_mut().zip(v) {
        if x.to_bits() != 0 {
            *o = x;
        }
    }
    out
}

/// [`copy_nonzero`] of steps.
fn copy_nonzero_steps(v: &[u64]) -> Vec<u64> {
    let mut out = vec![0; v.len()];
    for (o, &x) in out.iter_mut().zip(v) {
        if x != 0 {
            *o = x;
        }
    }
    out
}

/// One worker's gradient of a step's rows.
#[derive(Debug, Clone, Default)]
pub struct StepPartial {
    /// The exact gradient partial.
    pub grad: Option<Partial>,
    /// Exact loss sum.
    pub loss: Wide,
    /// Rows.
    pub rows: u64,
    /// Bound of the partial.
    pub bound: Bound,
    /// Progressive validation of the rows, scored before the step.
    pub eval: Option<EvalPartial>,
    /// The predictions of each chunk's rows (`predict_row`'s outputs, one
    /// vector per decoded row), when asked for.
    pub predictions: Vec<Vec<Vec<f64>>>,
    /// `model-parallel`: the rows' partial margins instead of a gradient
    /// ([`super::split::Split::margins`]).
    pub margins: Option<Vec<Exact>>,
}

/// A worker's whole model and its optimizer.
pub struct Replica {
    kind: ModelKind,
    optimizer: OptimizerSpec,
    penalty: Penalty,
    fit_intercept: bool,
    model: Box<dyn Model>,
    roles: Roles,
    opt: FirstOrderState,
    live: LiveSet,
    lazy: Option<Lazy>,
    clock: Clock,
    steps: u64,
    grad: Vec<f64>,
    /// This worker's gradient sums of a step, and every worker's summed:
    /// paged, as a wide hashed model's steps touch few coordinates.
    acc: PagedSums,
    sum: PagedSums,
    scratch: Scratch,
    peeked: Vec<(usize, f64)>,
    seen: Vec<bool>,
    coords: Vec<usize>,
}

impl Replica {
    /// A replica of `pipeline`'s model over `spec`, in `state`.
    pub fn new(pipeline: &Pipeline, spec: &FeatureSpec, state: ReplicaState) -> Result<Replica> {
        let kind = pipeline.model.kind;
        let optimizer = pipeline.optimizer;
        let first = optimizer.first_order().ok_or_else(|| Error::PipelineValue {
            key: "optimizer.kind".into(),
            message: "stream takes online steps: use sgd, adagrad, ftrl, momentum or adam (L-BFGS needs the whole data at once)".into(),
        })?;
        let len = model::param_count(&pipeline.model, spec);
        if state.theta.len() != len {
            return Err(Error::Internal(format!(
                "a stream replica of {len} parameters was given {}",
                state.theta.len()
            )));
        }
        let penalty = Penalty {
            l2: pipeline.model.l2,
            l1: pipeline.model.l1,
        };
        let roles = model::roles(&pipeline.model, spec);
        let lazy = match (first.lazy && roles.has_sparse(), state.lazy) {
            (true, Some(last)) => Some(Lazy::new(&optimizer, penalty).resumed(last)),
            (true, None) => Some(Lazy::new(&optimizer, penalty)),
            (false, _) => None,
        }
        .map(|l| l.with_room(len));
        let clock = Clock::from_stamps(state.clock)
            .ok_or_else(|| Error::Internal("a stream state's lazy clock is not whole".into()))?;
        Ok(Replica {
            kind,
            optimizer,
            penalty,
            fit_intercept: pipeline.model.fit_intercept,
            model: model::build_owned(&pipeline.model, spec, state.theta)
                .map_err(Error::Internal)?,
            roles,
            opt: state.opt,
            live: LiveSet::from_indices(&state.live),
            lazy,
            clock,
            steps: state.steps,
            grad: vec![0.0; len],
            acc: PagedSums::new(len),
            sum: PagedSums::new(len),
            scratch: Scratch::default(),
            peeked: Vec::new(),
            seen: Vec::new(),
            coords: Vec::new(),
        })
    }

    /// The state of a fresh model starting at `theta`.
    pub fn fresh(optimizer: &OptimizerSpec, theta: Vec<f64>) -> ReplicaState {
        let live = theta
            .iter()
            .enumerate()
            .filter(|(_, w)| **w != 0.0)
            .map(|(i, _)| i)
            .collect();
        ReplicaState {
            opt: FirstOrderState::starting_at(optimizer, &theta),
            theta,
            live,
            lazy: None,
            clock: Clock::default().stamps(),
            steps: 0,
        }
    }

    /// The model.
    pub fn model(&self) -> &dyn Model {
        self.model.as_ref()
    }

    /// Optimizer steps taken.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The state (call at a batch boundary, after [`Replica::flush`]).
    pub fn state(&self) -> ReplicaState {
        ReplicaState {
            theta: self.model.params().to_vec(),
            opt: self.opt.clone(),
            live: self.live.indices().to_vec(),
            lazy: self.lazy.as_ref().map(|l| l.current_at().to_vec()),
            clock: self.clock.stamps(),
            steps: self.steps,
        }
    }

    /// The state as a checkpoint keeps it (call at a batch boundary): only
    /// the live and dense coordinates are looked at, every other one being
    /// quiescent (zero weight and state, stamp 0), so a wide hashed model
    /// costs what its live weights cost.
    pub fn stored(&self) -> (crate::strategy::snapshot::Stored, Vec<Stamp>, u64) {
        let mut candidates: Vec<usize> = self.live.indices().to_vec();
        candidates.extend_from_slice(self.roles.dense_indices());
        candidates.sort_unstable();
        candidates.dedup();
        let stored = crate::strategy::snapshot::Stored::of(
            0,
            self.model.params(),
            &self.opt,
            None,
            self.live.indices(),
            self.lazy.as_ref().map(|l| l.current_at()),
            Some(&candidates),
        );
        (stored, self.clock.stamps(), self.steps)
    }

    /// Puts into the parameters the current value of every weight the rows
    /// of `block` read, remembering the stored ones ([`Replica::unpeek`]).
    fn peek(&mut self, block: &Block) {
        let Some(lazy) = self.lazy.as_ref().filter(|l| l.drift().moves()) else {
            return;
        };
        let (drift, last, now) = (lazy.drift(), lazy.current_at(), self.clock.now());
        if self.seen.len() != self.grad.len() {
            self.seen = vec![false; self.grad.len()];
        }
        let mut coords = std::mem::take(&mut self.coords);
        for i in 0..block.rows {
            coords.clear();
            self.model.sparse_coords(block, i, &mut |j| coords.push(j));
            let theta = self.model.params_mut();
            for &j in &coords {
                let t = last.get(j).copied().unwrap_or(0);
                if t >= now.t || self.seen[j] {
                    continue;
                }
                self.seen[j] = true;
                let stored = theta[j];
                let (m, v) = (
                    self.opt.m.get(j).copied().unwrap_or(0.0),
                    self.opt.v.get(j).copied().unwrap_or(0.0),
                );
                let penalised = !self.roles.is_intercept(j);
                theta[j] = drift.read(stored, &self.clock.at(t), &now, || (m, v), penalised);
                self.peeked.push((j, stored));
            }
        }
        self.coords = coords;
    }

    /// Puts back the stored values [`Replica::peek`] replaced.
    fn unpeek(&mut self) {
        let theta = self.model.params_mut();
        for (j, stored) in self.peeked.drain(..) {
            theta[j] = stored;
            self.seen[j] = false;
        }
    }

    /// This worker's part of a step over its chunks (`blocks`, all their
    /// rows): the rows scored first when `score`, then the exact gradient
    /// partial. Each chunk's sums are rounded once, whichever worker has it.
    pub fn partial(
        &mut self,
        blocks: &[Block],
        score: bool,
        predict: bool,
    ) -> Result<StepPartial, String> {
        let mut eval = score.then(|| EvalPartial::with_label_ref(Some(0.0)));
        let (mut loss, mut bound, mut rows) = (Wide::default(), Bound::default(), 0u64);
        let mut predictions = Vec::new();
        for block in blocks {
            self.peek(block);
            let predicted = (score && predict).then(|| self.predict(block));
            let out = self.chunk(block, eval.as_mut());
            self.unpeek();
            if let Some(p) = predicted {
                predictions.push(p?);
            }
            let (l, b) = out?;
            loss += l;
            bound += b;
            rows += block.rows as u64;
        }
        if rows == 0 {
            return Ok(StepPartial {
                eval,
                predictions,
                ..StepPartial::default()
            });
        }
        let mut touched: Vec<usize> = self.roles.dense_indices().to_vec();
        touched.extend(self.scratch.drain_touched());
        touched.sort_unstable();
        touched.dedup();
        let grad = self.take_partial(&touched);
        Ok(StepPartial {
            grad: Some(grad),
            loss,
            rows,
            bound,
            eval,
            predictions,
            margins: None,
        })
    }

    /// The accumulated partial of the coordinates `touched` (sorted,
    /// distinct; every other one is zero), in the form
    /// [`Partial::from_touched`] would give it, leaving the sums zero.
    fn take_partial(&mut self, touched: &[usize]) -> Partial {
        let len = self.acc.len();
        let entries: Vec<(u32, Exact)> = touched
            .iter()
            .map(|&i| (i as u32, self.acc.take(i)))
            .filter(|(_, v)| v.0 != 0)
            .collect();
        Partial::from_entries(len, entries)
    }

    /// The prediction of every row of `block`.
    fn predict(&self, block: &Block) -> Result<Vec<Vec<f64>>, String> {
        let mut out = vec![0.0; self.model.outputs()];
        (0..block.rows)
            .map(|i| {
                if self.model.predict_row(block, i, &mut out) {
                    Ok(out.clone())
                } else {
                    Err(format!(
                        "the model's output is not finite on file row {}: the weights overflow on it",
                        block.file_row.get(i).unwrap_or(0)
                    ))
                }
            })
            .collect()
    }

    /// Scores a chunk into `eval` and adds its gradient to the accumulator.
    fn chunk(
        &mut self,
        block: &Block,
        eval: Option<&mut EvalPartial>,
    ) -> Result<(Wide, Bound), String> {
        if let Some(e) = eval {
            let mut part = EvalPartial::with_label_ref(Some(0.0));
            part.add_block(self.model.as_ref(), block);
            e.merge(part);
        }
        if block.rows == 0 {
            return Ok((Wide::default(), Bound::default()));
        }
        let rows: Vec<usize> = (0..block.rows).collect();
        let (loss, bound) =
            self.model
                .accumulate(block, &rows, &mut self.scratch, (&mut self.acc).into())?;
        let loss = Wide::from_f64(loss).ok_or_else(|| loss_message(loss))?;
        Ok((loss, bound))
    }

    /// One optimizer step from every worker's partial (in any order: the
    /// sums are exact) over `rows` rows in all. `batch` and `step` name the
    /// step in an error.
    pub fn step(
        &mut self,
        partials: Vec<Partial>,
        rows: u64,
        bound: Bound,
        batch: u64,
        step: u64,
    ) -> Result<()> {
        let epoch = u32::try_from(batch).unwrap_or(u32::MAX);
        let diverged = |message: String| Error::Diverged {
            epoch,
            step,
            message,
        };
        if !bound.holds() {
            return Err(diverged(crate::dataflow::bound_message(bound)));
        }
        if rows == 0 {
            return Ok(());
        }
        let mut touched: Vec<usize> = Vec::new();
        for p in partials {
            match p {
                Partial::Dense(values) => {
                    touched.extend(0..values.len());
                    for (i, v) in values.into_iter().enumerate() {
                        self.sum.add(i, v);
                    }
                }
                Partial::Sparse { entries, .. } => {
                    for (i, v) in entries {
                        touched.push(i as usize);
                        self.sum.add(i as usize, v);
                    }
                }
            }
        }
        touched.extend_from_slice(self.roles.dense_indices());
        touched.sort_unstable();
        touched.dedup();
        let frozen = !self.fit_intercept;
        for &i in &touched {
            let g = self.sum.take(i).to_f64();
            self.grad[i] = update::mean(g, rows, frozen && self.roles.is_intercept(i));
        }
        touched.retain(|&i| self.grad[i] != 0.0 || self.roles.is_dense(i));
        let step_args = update::Step {
            spec: &self.optimizer,
            lr: update::rate(&self.optimizer, self.steps, epoch),
            penalty: self.penalty,
        };
        let roles = &self.roles;
        let dense = |i: usize| roles.is_dense(i);
        let visit = update::Visit::own_clock(
            step_args,
            self.lazy.as_mut(),
            &mut self.clock,
            &mut touched,
            &dense,
        );
        let bad = update::apply(
            step_args,
            self.model.params_mut(),
            &mut self.grad,
            &mut self.opt,
            &mut self.live,
            visit,
            |i| !roles.is_intercept(i),
        );
        self.steps += 1;
        match bad {
            Some(i) => Err(update::diverged(epoch, step, i, self.model.params()[i])),
            None => Ok(()),
        }
    }

    /// Brings every weight up to the last step (a batch's end).
    pub fn flush(&mut self) {
        if let Some(lazy) = self.lazy.as_mut() {
            let roles = &self.roles;
            lazy.flush(
                &self.optimizer,
                self.model.params_mut(),
                &mut self.opt,
                &self.clock,
                self.live.indices(),
                |i| !roles.is_intercept(i),
            );
            let now = self.clock.now().t;
            self.clock.forget_before(now);
        }
    }

    /// This replica at a barrier of a local-replica stream (call after
    /// [`Replica::flush`]), as worker `from`, having trained `rows` rows in
    /// `local_steps` steps since the last barrier.
    pub fn sync_part(&self, from: u32, rows: u64, local_steps: u64) -> SyncPart {
        let mut coords: Vec<usize> = self.live.indices().to_vec();
        coords.extend_from_slice(self.roles.dense_indices());
        coords.sort_unstable();
        coords.dedup();
        let at = |v: &[f64]| -> Vec<f64> {
            if v.is_empty() {
                return Vec::new();
            }
            coords
                .iter()
                .map(|&i| v.get(i).copied().unwrap_or(0.0))
                .collect()
        };
        let mut live = self.live.indices().to_vec();
        live.sort_unstable();
        SyncPart {
            from,
            rows,
            local_steps,
            state: SparseState {
                steps: self.steps,
                opt_t: self.opt.t,
                theta: at(self.model.params()),
                m: at(&self.opt.m),
                v: at(&self.opt.v),
                coords,
                live,
                clock: self.clock.stamps(),
            },
        }
    }

    /// Replaces this replica by the replicas' state `avg` (every coordinate
    /// outside `avg.coords` is zero in every replica); `mixed`: a mean of
    /// several, whose FTRL weights are then recomputed from the mean state
    /// `(z, n)` (the weights are a function of it; the mean of the weights
    /// is not), at the rate of the step of batch `batch` just taken.
    pub fn install(&mut self, avg: &SparseState, mixed: bool, batch: u64) -> Result<()> {
        let len = self.grad.len();
        if avg.coords.last().is_some_and(|&c| c >= len) {
            return Err(Error::Internal(format!(
                "an averaged stream model has a coordinate past its {len} parameters"
            )));
        }
        let theta = self.model.params_mut();
        for (k, &i) in avg.coords.iter().enumerate() {
            theta[i] = avg.theta[k];
        }
        for (vector, values) in [(&mut self.opt.m, &avg.m), (&mut self.opt.v, &avg.v)] {
            if values.is_empty() {
                continue;
            }
            vector.resize(len, 0.0);
            for (k, &i) in avg.coords.iter().enumerate() {
                vector[i] = values[k];
            }
        }
        self.live = LiveSet::from_indices(&avg.live);
        self.clock = Clock::from_stamps(avg.clock.clone())
            .ok_or_else(|| Error::Internal("an averaged stream clock is not whole".into()))?;
        if let Some(lazy) = self.lazy.as_mut() {
            lazy.set_current(&avg.coords, self.clock.now().t);
        }
        self.opt.t = avg.opt_t;
        self.steps = avg.steps;
        if let (OptimizerSpec::Ftrl { beta, .. }, true) = (self.optimizer, mixed) {
            let epoch = u32::try_from(batch).unwrap_or(u32::MAX);
            let lr = update::rate(&self.optimizer, self.steps.saturating_sub(1), epoch);
            let theta = self.model.params_mut();
            for &i in &avg.coords {
                let (z, n) = (self.opt.m.get(i), self.opt.v.get(i));
                if let (Some(&z), Some(&n)) = (z, n) {
                    let penalised = !self.roles.is_intercept(i);
                    theta[i] = crate::optim::ftrl_weight(
                        z,
                        n,
                        self.opt.t as f64,
                        lr,
                        beta,
                        self.penalty,
                        penalised,
                    );
                }
            }
        }
        Ok(())
    }

    /// The model's kind.
    pub fn kind(&self) -> ModelKind {
        self.kind
    }
}

impl super::publish::WholeModel for Replica {
    fn model(&self) -> &dyn Model {
        Replica::model(self)
    }

    fn stored(&self) -> (crate::strategy::snapshot::Stored, Vec<Stamp>, u64) {
        Replica::stored(self)
    }
}
