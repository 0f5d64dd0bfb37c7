//! The `model-parallel` step operator. Every worker reads every row of a
//! step, but only the columns (or hashed slots) of its own feature block,
//! and holds only its block's weights. One round (timely time `r`):
//!
//! ```text
//!  margin steps (every worker) ──MarginMsg (partial margins)──► broadcast
//!        ▲                                                        │
//!        └──────────────────────── feedback (+1) ◄────────────────┘
//! ```
//!
//! When a round is complete, every worker sums all partial margins (in
//! worker order, so every worker gets the same sums), computes the loss and
//! `∂loss/∂margin` of each row, the gradient of its own block and steps its
//! own optimizer, then sends the partial margins of the next step. The
//! evaluation rounds send validation margins instead; every worker finishes
//! the same metrics and makes the same early-stopping decision, and worker
//! 0 keeps the records. At the end each block goes to worker 0 once, to
//! write the model file.
//!
//! At a checkpointed epoch boundary, or after a step that passes a multiple
//! of `checkpoint_every = "N steps"`, every worker emits its block's state
//! ([`BlockState`], encoded by the strategy) as a [`Part`]; worker 0
//! leaves the records' and early stopping's state of every epoch boundary
//! for the checkpoint sink; a resumed job starts each block from its state
//! there.
//!
//! A first SIGINT or SIGTERM (with checkpoints) rides on the next partial
//! margins a worker of the signalled process sends. Every worker sees it in
//! the same round, so all stop at one point: after that round's step, with
//! a checkpoint there (inside the epoch), or at the boundary after the
//! epoch's evaluation when the step was the epoch's last.

use std::cell::RefCell;
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Pipeline as Local;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::{Stream, StreamVec};

use super::collect::{Epochs, MarginEpoch};
use super::hooks::Hooks;
use super::rounds::Rounds;
use super::snapshot::{Cadence, CollectorState, CollectorStates, Part, PartOf};
use super::{loss_message, Failure, Phase};
use crate::data::cache::WorkerData;
use crate::data::encode::{Block, Labels};
use crate::error::Error;
use crate::exact::Wide;
use crate::metrics::sink::EpochRecord;
use crate::model::block::FeatureBlock;
use crate::model::loss;
use crate::optim::lazy::{Clock, Lazy, Stamp};
use crate::optim::{update, FirstOrderState, LiveSet, Penalty};
use crate::spec::{EarlyStopping, ModelKind, OptimizerSpec};

/// One worker's partial margins for a round.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MarginMsg {
    /// Sending worker.
    pub from: u32,
    /// The round: a training step or an evaluation.
    pub phase: Phase,
    /// Row-major `rows × k` partial margins.
    pub margins: Vec<f64>,
    /// Evaluation rounds: payload bytes this worker sent to other workers
    /// since the previous evaluation.
    pub bytes: u64,
    /// Set if the worker failed.
    pub failure: Option<Failure>,
}

/// Payload bytes of a [`MarginMsg`] with `n` margins (bincode layout).
pub fn margin_bytes(n: usize) -> u64 {
    4 + 24 + 8 + 8 * n as u64 + 8 + 1
}

/// A worker's final block, sent to worker 0.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlockMsg {
    /// Sending worker (its block is `FeatureBlock::split(..)[from]`).
    pub from: u32,
    /// The block's parameters.
    pub values: Vec<f64>,
}

/// What the operator emits.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MarginOut {
    /// Partial margins for every worker.
    Partial(MarginMsg),
    /// The final block, for worker 0.
    Block(BlockMsg),
    /// The block's state at a checkpointed boundary, for worker 0.
    Saved(Part),
}

/// A block's state at an epoch boundary, in its local coordinates: what a
/// checkpoint keeps of it and what a resumed job starts it from. Nothing
/// else a block holds outlives the boundary (the gradient buffer is zero,
/// the epoch's loss and bytes are taken by its evaluation).
#[derive(Debug, Clone, PartialEq)]
pub struct BlockState {
    /// Epochs completed.
    pub epoch: u32,
    /// The job ends at this boundary (last epoch or early stop).
    pub done: bool,
    /// The block's parameters.
    pub theta: Vec<f64>,
    /// Its optimizer state.
    pub opt: FirstOrderState,
    /// The best parameters so far (early stopping).
    pub best: Option<Vec<f64>>,
    /// The coordinates that ever had a gradient, in the order they did.
    pub live: Vec<usize>,
    /// Lazy updates: the step each coordinate is current at.
    pub lazy: Option<Vec<u64>>,
    /// Lazy updates: the clock's stamps, oldest first.
    pub clock: Vec<Stamp>,
    /// Optimizer steps so far.
    pub steps: u64,
    /// Inside epoch `epoch + 1`: the step to run next (`None` at the
    /// boundary after `epoch` epochs).
    pub next: Option<u64>,
    /// Exact sum of the epoch's training losses so far (the same on every
    /// worker: every worker sums the same margins).
    pub epoch_loss: Wide,
    /// Training rows behind `epoch_loss`.
    pub epoch_rows: u64,
}

/// A block's encoding for a checkpoint (the strategy's; the bytes of an
/// [`Part`]). A block that cannot be saved says why in its bytes:
/// the writer on worker 0 then fails the job with that reason.
pub type EncodeBlock = Box<dyn Fn(&BlockState) -> Vec<u8>>;

/// How a model-parallel job takes checkpoints.
pub struct BlockCheckpoints {
    /// When they fall.
    pub cadence: Cadence,
    /// Where worker 0 leaves the records' and early stopping's state at
    /// each checkpointed boundary (the checkpoint sink takes it).
    pub states: CollectorStates,
    /// How a block's state is encoded.
    pub encode: EncodeBlock,
}

/// The end of training as seen by every worker.
#[derive(Debug, Clone, Copy)]
pub struct Finished {
    /// Epochs run.
    pub epochs: u32,
}

/// What the operator needs.
pub struct MarginContext {
    /// The block's starting values (warm start; zeros otherwise).
    pub init: Vec<f64>,
    /// This worker's index and the number of workers.
    pub index: usize,
    /// Number of workers.
    pub peers: usize,
    /// Every row of the data, decoded with this block's feature spec.
    pub data: WorkerData,
    /// The block this worker owns.
    pub block: FeatureBlock,
    /// Model family.
    pub kind: ModelKind,
    /// First-order optimizer.
    pub optimizer: OptimizerSpec,
    /// Penalties.
    pub penalty: Penalty,
    /// Fit intercepts.
    pub fit_intercept: bool,
    /// Epochs to run.
    pub epochs: u32,
    /// Steps per epoch.
    pub steps_per_epoch: u64,
    /// True if there are validation rows.
    pub has_validation: bool,
    /// The reference validation labels are taken relative to (regression:
    /// the training label mean), the same on every worker.
    pub label_ref: Option<f64>,
    /// Early stopping rule.
    pub early_stopping: Option<EarlyStopping>,
    /// Epoch records (kept on worker 0).
    pub records: Rc<RefCell<Vec<EpochRecord>>>,
    /// Set when training ends.
    pub finished: Rc<RefCell<Option<Finished>>>,
    /// Where this worker records a failure.
    pub failure: Rc<RefCell<Option<Failure>>>,
    /// Checkpoints, if the job takes them.
    pub checkpoints: Option<BlockCheckpoints>,
    /// A resumed job: the block's state at the boundary it resumes from
    /// (in place of `init`), and the records' and early stopping's state
    /// there (the records already in `records` on worker 0).
    pub resume: Option<(BlockState, CollectorState)>,
}

/// Extension trait: the model-parallel step.
pub trait MarginSteps<'scope> {
    /// Consumes every worker's partial margins of a round and emits this
    /// worker's partial margins of the next round (or its final block).
    fn margin_steps(self, ctx: MarginContext) -> StreamVec<'scope, u64, MarginOut>;
}

struct State {
    ctx: MarginContext,
    theta: Vec<f64>,
    best: Option<Vec<f64>>,
    opt: FirstOrderState,
    /// Gradient buffer (zero outside the step's support) and the
    /// coordinates the optimizer visits.
    grad: Vec<f64>,
    live: LiveSet,
    touched: Vec<usize>,
    /// Lazy updates of the block (`None`: every step visits every live
    /// coordinate), and the steps taken.
    lazy: Option<Lazy>,
    clock: Clock,
    /// The epoch records and early stopping, the same on every worker.
    epochs: Epochs,
    /// Rows of the step in flight (this block's columns), in margin order.
    rows: Block,
    /// Labels of the validation rows, in margin order.
    val_labels: Labels,
    steps: u64,
    epoch_loss: Wide,
    epoch_rows: u64,
    bytes: u64,
    done: bool,
    /// A resumed job: where it starts (epochs completed, the step to run
    /// next inside the next epoch, done).
    resumed: Option<(u32, Option<u64>, bool)>,
    /// A stop asked for in a round that could not stop (the epoch's last
    /// step): it stops at the boundary after the evaluation.
    stop_request: Option<Failure>,
    /// Test hooks (a slowed worker).
    hooks: Hooks,
}

impl State {
    fn fail(&mut self, e: &Error) -> Failure {
        let f = Failure::from(e);
        self.ctx.failure.borrow_mut().get_or_insert(f.clone());
        self.done = true;
        f
    }

    /// Fails on `e` and tells the other workers, in place of `phase`'s margins.
    fn fail_round(&mut self, e: &Error, phase: Phase, emit: &mut impl FnMut(MarginOut)) {
        let f = self.fail(e);
        self.tell(f, phase, emit);
    }

    /// Stops on failure `f` and tells the other workers, in place of
    /// `phase`'s margins.
    fn tell(&mut self, f: Failure, phase: Phase, emit: &mut impl FnMut(MarginOut)) {
        self.done = true;
        emit(MarginOut::Partial(MarginMsg {
            from: self.ctx.index as u32,
            phase,
            margins: Vec::new(),
            bytes: 0,
            failure: Some(f),
        }));
    }

    /// This worker's partial margins for `phase`.
    fn partials(&mut self, phase: Phase) -> Result<Vec<f64>, Error> {
        let k = self.ctx.block.layout.k;
        let mut out = Vec::new();
        let mut m = vec![0.0; k];
        match phase {
            Phase::Train { epoch, step } => {
                self.ctx.data.prepare(epoch)?;
                self.rows.clear();
                let rows = &mut self.rows;
                self.ctx.data.step_rows(step, |b, idx| {
                    rows.push_rows(b, idx);
                    Ok(())
                })?;
                let block = &self.ctx.block;
                if let Some(lazy) = self.lazy.as_mut() {
                    // Bring what the rows read up to the last step.
                    for i in 0..self.rows.rows {
                        for j in block.hashed_coords(&self.rows, i) {
                            let penalised = !block.is_intercept(j);
                            let (spec, opt) = (&self.ctx.optimizer, &mut self.opt);
                            lazy.read(spec, &mut self.theta, opt, &self.clock, j, penalised);
                        }
                    }
                }
                out.reserve(self.rows.rows * k);
                for i in 0..self.rows.rows {
                    block.margins(&self.theta, &self.rows, i, &mut m);
                    out.extend_from_slice(&m);
                }
            }
            Phase::Eval { .. } => {
                self.flush();
                self.val_labels.clear();
                let labels = &mut self.val_labels;
                let (block, theta) = (&self.ctx.block, &self.theta);
                self.ctx.data.validation(|b| {
                    for i in 0..b.rows {
                        block.margins(theta, b, i, &mut m);
                        out.extend_from_slice(&m);
                        labels.push(b.label.at(i));
                    }
                })?;
            }
            Phase::Refresh | Phase::Reduce | Phase::Final { .. } => {}
        }
        Ok(out)
    }

    /// Lazy updates: brings every live weight up to the last step (so that
    /// evaluation, the best weights and the final block are the weights).
    fn flush(&mut self) {
        if let Some(lazy) = self.lazy.as_mut() {
            let block = &self.ctx.block;
            lazy.flush(
                &self.ctx.optimizer,
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

    /// Applies a training round: loss, block gradient, optimizer step.
    fn train(&mut self, epoch: u32, step: u64, margins: &[f64]) -> Result<(), Error> {
        let k = self.ctx.block.layout.k;
        let n = self.rows.rows;
        let diverged = |message: String| Error::Diverged {
            epoch,
            step,
            message,
        };
        let mut dm = vec![0.0; k];
        let mut loss_sum = 0.0;
        let mut touched = std::mem::take(&mut self.touched);
        for i in 0..n {
            let y = self.rows.label.at(i);
            loss_sum +=
                loss::loss_and_grad(self.ctx.kind, &margins[i * k..(i + 1) * k], y, &mut dm);
            self.ctx
                .block
                .add_gradient(&self.rows, i, &dm, &mut self.grad, &mut touched);
        }
        self.epoch_loss +=
            Wide::from_f64(loss_sum).ok_or_else(|| diverged(loss_message(loss_sum)))?;
        self.epoch_rows += n as u64;
        if n > 0 {
            let block = &self.ctx.block;
            let step_args = update::Step {
                spec: &self.ctx.optimizer,
                lr: update::rate(&self.ctx.optimizer, self.steps, epoch),
                penalty: self.ctx.penalty,
            };
            let frozen_intercept = !(block.intercept && self.ctx.fit_intercept);
            // Candidates: every row's coordinates and the dense ones.
            touched.extend(block.dense_indices());
            touched.sort_unstable();
            touched.dedup();
            for &i in &touched {
                self.grad[i] = update::mean(
                    self.grad[i],
                    n as u64,
                    frozen_intercept && block.is_intercept(i),
                );
            }
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
            touched.clear();
            if let Some(i) = bad {
                let g = block.global(i).unwrap_or(0);
                return Err(update::diverged(epoch, step, g, self.theta[i]));
            }
        }
        self.touched = touched;
        self.steps += 1;
        Ok(())
    }

    /// Finishes an evaluation round; returns true if training is over.
    fn evaluate(
        &mut self,
        epoch: u32,
        steps: u64,
        margins: &[f64],
        bytes: u64,
    ) -> Result<bool, Error> {
        let k = self.ctx.block.layout.k;
        let none = Labels::default();
        let labels = if self.ctx.has_validation {
            &self.val_labels
        } else {
            &none
        };
        let keeper = (self.ctx.index == 0).then_some(&*self.ctx.records);
        let (stop, best) = self.epochs.close_margins(
            MarginEpoch {
                epoch,
                steps,
                kind: self.ctx.kind,
                margins,
                k,
                labels,
                label_ref: self.ctx.label_ref,
                train_loss: std::mem::take(&mut self.epoch_loss),
                train_rows: std::mem::take(&mut self.epoch_rows),
                bytes,
            },
            keeper,
        )?;
        if best {
            self.best = Some(self.theta.clone());
        }
        Ok(stop || epoch >= self.ctx.epochs)
    }

    /// Sends this worker's partial margins for `phase`.
    fn send(&mut self, phase: Phase, emit: &mut impl FnMut(MarginOut)) {
        let (margins, failure) = match self.partials(phase) {
            Ok(m) => (m, self.asked_to_stop()),
            Err(e) => (Vec::new(), Some(self.fail(&e))),
        };
        let others = self.ctx.peers.saturating_sub(1) as u64;
        self.bytes += others * margin_bytes(margins.len());
        let bytes = match phase {
            Phase::Eval { .. } => std::mem::take(&mut self.bytes),
            _ => 0,
        };
        emit(MarginOut::Partial(MarginMsg {
            from: self.ctx.index as u32,
            phase,
            margins,
            bytes,
            failure,
        }));
    }

    /// A request to stop at a checkpoint (a first SIGINT or SIGTERM to this
    /// process), for a job that takes checkpoints.
    fn asked_to_stop(&self) -> Option<Failure> {
        self.ctx.checkpoints.as_ref()?;
        crate::io::signals::stop_requested().map(|signal| {
            Failure::from(&Error::Stopped {
                signal,
                worker: self.ctx.index,
            })
        })
    }

    /// Continues from a checkpoint's state of this block: `init` is
    /// ignored, and [`Self::start`] goes on after the boundary.
    fn resume(&mut self, block: BlockState, collector: &CollectorState) -> Result<(), Error> {
        let len = self.ctx.block.len();
        if block.theta.len() != len {
            return Err(Error::Internal(format!(
                "the checkpoint's block {} holds {} parameters, {len} here",
                self.ctx.index,
                block.theta.len()
            )));
        }
        self.lazy = match (self.lazy.take(), block.lazy) {
            (Some(lazy), Some(last)) => Some(lazy.resumed(last)),
            (None, None) => None,
            _ => {
                return Err(Error::Internal(
                    "the checkpoint and the job disagree on lazy updates".into(),
                ))
            }
        };
        self.clock = Clock::from_stamps(block.clock)
            .ok_or_else(|| Error::Internal("the checkpoint's lazy clock is not whole".into()))?;
        self.theta = block.theta;
        self.opt = block.opt;
        self.best = block.best;
        self.live = LiveSet::from_indices(&block.live);
        self.steps = block.steps;
        self.epoch_loss = block.epoch_loss;
        self.epoch_rows = block.epoch_rows;
        self.epochs.resume(collector);
        self.resumed = Some((block.epoch, block.next, block.done));
        Ok(())
    }

    /// The first round: a fresh job's first step, or where the checkpoint
    /// a resumed job continues from stood: the step after it inside an
    /// epoch, the next epoch's first step after a boundary, or (the job
    /// ended there) a round without margins, after which the blocks go to
    /// worker 0.
    fn start(&mut self, emit: &mut impl FnMut(MarginOut)) {
        if let Some(c) = self
            .ctx
            .checkpoints
            .as_ref()
            .filter(|_| self.ctx.index == 0)
        {
            // The collector's state a checkpoint before the first boundary
            // carries.
            let state = self.epochs.state(&self.ctx.records.borrow());
            match state {
                Ok(state) => {
                    let epoch = self.resumed.map_or(0, |(e, _, _)| e);
                    c.states.borrow_mut().insert(epoch, state);
                }
                Err(e) => {
                    self.fail(&e);
                }
            }
        }
        let phase = match self.resumed {
            Some((epochs, _, true)) => Phase::Final {
                epochs,
                objective: None,
                converged_by: None,
            },
            Some((epoch, next, false)) => Phase::Train {
                epoch,
                step: next.unwrap_or(0),
            },
            None => Phase::Train { epoch: 0, step: 0 },
        };
        let failed = self.ctx.failure.borrow().clone();
        match failed {
            // Resuming failed: the other workers stop at the first round.
            Some(f) => self.tell(f, phase, emit),
            None => self.send(phase, emit),
        }
    }

    /// Ends training after `epochs` epochs: the block (its best values
    /// under early stopping) goes to worker 0.
    fn finish(&mut self, epochs: u32, emit: &mut impl FnMut(MarginOut)) {
        self.done = true;
        *self.ctx.finished.borrow_mut() = Some(Finished { epochs });
        let keep = self.ctx.early_stopping.is_some();
        let values = match (keep, self.best.take()) {
            (true, Some(b)) => b,
            _ => std::mem::take(&mut self.theta),
        };
        emit(MarginOut::Block(BlockMsg {
            from: self.ctx.index as u32,
            values,
        }));
    }

    /// At the boundary after `epoch` epochs (the job ends there if
    /// `done`): on worker 0 the records' and early stopping's state there,
    /// and if the boundary is checkpointed (or `forced`: the job stops
    /// there), the block's state for the checkpoint.
    fn boundary(
        &mut self,
        epoch: u32,
        done: bool,
        forced: bool,
        emit: &mut impl FnMut(MarginOut),
    ) -> Result<(), Error> {
        let Some(c) = self.ctx.checkpoints.as_ref() else {
            return Ok(());
        };
        if self.ctx.index == 0 {
            // Every boundary: a checkpoint inside the next epoch carries
            // this state too.
            let state = self.epochs.state(&self.ctx.records.borrow())?;
            c.states.borrow_mut().insert(epoch, state);
        }
        if forced || c.cadence.due_at_epoch(epoch, self.steps, 1) {
            self.save(epoch, None, done, emit);
        }
        Ok(())
    }

    /// The block's state for a checkpoint after `epoch` epochs, inside the
    /// next one before step `next` if given.
    fn save(
        &mut self,
        epoch: u32,
        next: Option<u64>,
        done: bool,
        emit: &mut impl FnMut(MarginOut),
    ) {
        let Some(c) = self.ctx.checkpoints.as_ref() else {
            return;
        };
        let block = BlockState {
            epoch,
            done,
            theta: self.theta.clone(),
            opt: self.opt.clone(),
            best: self.best.clone(),
            live: self.live.indices().to_vec(),
            lazy: self.lazy.as_ref().map(|l| l.current_at().to_vec()),
            clock: self.clock.stamps(),
            steps: self.steps,
            next,
            epoch_loss: self.epoch_loss,
            epoch_rows: self.epoch_rows,
        };
        emit(MarginOut::Saved(Part {
            position: self.steps,
            epoch,
            worker: self.ctx.index as u32,
            of: PartOf::Owner,
            bytes: (c.encode)(&block),
        }));
    }

    /// Stops the job on request `f`, its checkpoint taken: nothing more is
    /// sent, and the request ends the job (exit 128 + the signal).
    fn stop(&mut self, f: Failure) {
        self.ctx.failure.borrow_mut().get_or_insert(f);
        self.done = true;
    }

    fn round(&mut self, mut msgs: Vec<MarginMsg>, emit: &mut impl FnMut(MarginOut)) {
        if self.done {
            return;
        }
        // Another operator of this worker failed (a checkpoint that could
        // not be written): stop the job as a failed round would.
        let elsewhere = self.ctx.failure.borrow().clone();
        if let Some(f) = elsewhere {
            match msgs.first().map(|m| m.phase) {
                Some(phase) => self.tell(f, phase, emit),
                None => self.done = true,
            }
            return;
        }
        if let Some(f) = msgs
            .iter()
            .find_map(|m| m.failure.clone().filter(|f| !f.is_stop()))
        {
            self.ctx.failure.borrow_mut().get_or_insert(f);
            self.done = true;
            return;
        }
        // Every worker sees the same requests: all stop at one point.
        let asked = msgs
            .iter()
            .find_map(|m| m.failure.clone().filter(Failure::is_stop));
        if let Some(f) = asked.filter(|_| self.stop_request.is_none()) {
            self.stop_request = Some(f);
        }
        msgs.sort_by_key(|m| m.from);
        let phase = msgs.first().map(|m| m.phase);
        let consistent = msgs.len() == self.ctx.peers
            && msgs.iter().enumerate().all(|(w, m)| {
                m.from as usize == w
                    && Some(m.phase) == phase
                    && m.margins.len() == msgs[0].margins.len()
            });
        let Some(phase) = phase.filter(|_| consistent) else {
            self.fail(&Error::Internal(format!(
                "model-parallel round with {} of {} workers' margins",
                msgs.len(),
                self.ctx.peers
            )));
            return;
        };
        // Sum in worker order: every worker gets the same margins.
        let mut margins = vec![0.0; msgs[0].margins.len()];
        for m in &msgs {
            margins
                .iter_mut()
                .zip(&m.margins)
                .for_each(|(a, b)| *a += b);
        }
        let next = match phase {
            Phase::Train { epoch, step } => {
                if let Err(e) = self.train(epoch, step, &margins) {
                    self.fail_round(&e, phase, emit);
                    return;
                }
                if step + 1 < self.ctx.steps_per_epoch {
                    let due = self
                        .ctx
                        .checkpoints
                        .as_ref()
                        .is_some_and(|c| c.cadence.due_at_step(self.steps, 1));
                    if due || self.stop_request.is_some() {
                        self.save(epoch, Some(step + 1), false, emit);
                    }
                    if let Some(f) = self.stop_request.take() {
                        self.stop(f);
                        return;
                    }
                    Phase::Train {
                        epoch,
                        step: step + 1,
                    }
                } else {
                    Phase::Eval {
                        epoch: epoch + 1,
                        steps: self.steps,
                        objective: None,
                    }
                }
            }
            Phase::Eval { epoch, steps, .. } => {
                let bytes = msgs.iter().map(|m| m.bytes).sum();
                let stopping = self.stop_request.is_some();
                let over = self
                    .evaluate(epoch, steps, &margins, bytes)
                    .and_then(|over| {
                        self.boundary(epoch, over, stopping && !over, emit)
                            .map(|()| over)
                    });
                match over {
                    Ok(true) => {
                        self.finish(epoch, emit);
                        return;
                    }
                    Ok(false) => {
                        if let Some(f) = self.stop_request.take() {
                            self.stop(f);
                            return;
                        }
                    }
                    Err(e) => {
                        self.fail_round(&e, phase, emit);
                        return;
                    }
                }
                Phase::Train { epoch, step: 0 }
            }
            Phase::Final { epochs, .. } => {
                self.finish(epochs, emit);
                return;
            }
            Phase::Refresh | Phase::Reduce => return,
        };
        self.send(next, emit);
    }
}

impl<'scope> MarginSteps<'scope> for Stream<'scope, u64, Vec<MarginMsg>> {
    fn margin_steps(self, mut ctx: MarginContext) -> StreamVec<'scope, u64, MarginOut> {
        // Non-zero starting values are live from the start: the penalty
        // acts on them before any gradient does.
        let mut live = LiveSet::default();
        ctx.init
            .iter()
            .enumerate()
            .filter(|(_, w)| **w != 0.0)
            .for_each(|(i, _)| live.insert(i));
        let hooks = Hooks::from_env(ctx.index);
        let resume = ctx.resume.take();
        let mut state = State {
            theta: ctx.init.clone(),
            best: None,
            opt: FirstOrderState::starting_at(&ctx.optimizer, &ctx.init),
            grad: vec![0.0; ctx.block.len()],
            live,
            touched: Vec::new(),
            lazy: ctx
                .block
                .steps_lazily(&ctx.optimizer)
                .then(|| Lazy::new(&ctx.optimizer, ctx.penalty)),
            clock: Clock::default(),
            epochs: Epochs::new(ctx.kind, ctx.has_validation, ctx.early_stopping.as_ref()),
            rows: Block::default(),
            val_labels: Labels::default(),
            steps: 0,
            epoch_loss: Wide::default(),
            epoch_rows: 0,
            bytes: 0,
            done: false,
            resumed: None,
            stop_request: None,
            hooks,
            ctx,
        };
        if let Some((block, collector)) = resume {
            if let Err(e) = state.resume(block, &collector) {
                state.fail(&e);
            }
        }
        let scope = self.scope();
        self.unary_frontier(Local, "MarginSteps", move |cap0, info| {
            let activator = scope.activator_for(info.address);
            let mut start = Some(cap0);
            let mut rounds = Rounds::default();
            move |(input, frontier), output| {
                if let Some(cap) = start.take() {
                    let mut session = output.session(&cap);
                    state.start(&mut |m| session.give(m));
                }
                input.for_each(|cap, data| rounds.add(cap, data, output.output_index()));
                while let Some((t, first)) = rounds.ready(frontier.frontier()) {
                    let trains = first
                        .first()
                        .is_some_and(|m| matches!(m.phase, Phase::Train { .. }));
                    if let Some(wait) = trains.then(|| state.hooks.hold(t)).flatten() {
                        activator.activate_after(wait);
                        return;
                    }
                    let Some((_, cap, msgs)) = rounds.pop_ready(frontier.frontier()) else {
                        break;
                    };
                    let mut session = output.session(&cap);
                    state.round(msgs, &mut |m| session.give(m));
                }
            }
        })
    }
}
