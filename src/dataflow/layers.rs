//! The `model-parallel` step operator of a network (`model.kind = "mlp"`):
//! every worker reads every row of a step and holds one slice of each
//! hidden layer's units ([`NetworkSlice`]). A step is several rounds
//! (timely times), each a broadcast of one message per worker:
//!
//! ```text
//!  forward, for each hidden layer l = 1..L:
//!    exact partials of the layer above's pre-activations (the margins after
//!    layer L), summed by every worker in the same integers
//!  backward, for each hidden layer l = L..2:
//!    each worker's slice of ∂loss/∂z_l, gathered whole by every worker
//! ```
//!
//! A network with one hidden layer exchanges one round a step (the
//! partial margins, as the linear `model-parallel`); with `L` hidden
//! layers, `2L − 1`. After the last round of a step every worker has the
//! gradient of its own parameters and steps its own optimizer. Evaluation
//! rounds run the forward rounds over the validation rows; every worker
//! finishes the same metrics and makes the same early-stopping decision,
//! and worker 0 keeps the records. At the end each worker's parameters go
//! to worker 0 once, to write the model file.

use std::cell::RefCell;
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Pipeline as Local;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::{Stream, StreamVec};

use super::collect::{Epochs, MarginEpoch};
use super::margins::Finished;
use super::rounds::Rounds;
use super::{loss_message, Failure, Phase};
use crate::data::cache::WorkerData;
use crate::data::encode::{Block, Labels};
use crate::error::Error;
use crate::exact::{Exact, Wide};
use crate::metrics::sink::EpochRecord;
use crate::model::loss;
use crate::model::unit_split::{NetworkSlice, Slice};
use crate::optim::{update, FirstOrderState, LiveSet, Penalty};
use crate::spec::{EarlyStopping, ModelKind, OptimizerSpec};

/// One worker's message of a round.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerMsg {
    /// Sending worker.
    pub from: u32,
    /// The step or evaluation the round belongs to.
    pub phase: Phase,
    /// The round inside it: `0..L` forward, `L..2L−1` backward.
    pub stage: u32,
    /// Forward rounds: the exact partial pre-activations (`rows × width`).
    pub sums: Vec<Exact>,
    /// Backward rounds: this worker's slice of `∂loss/∂z` (`rows × units`).
    pub slice: Vec<f64>,
    /// Evaluation rounds: payload bytes this worker sent to other workers
    /// since the previous evaluation.
    pub bytes: u64,
    /// Set if the worker failed.
    pub failure: Option<Failure>,
}

impl LayerMsg {
    /// Payload bytes (bincode layout): header, the sums (16 bytes each),
    /// the slice (8 each).
    fn payload(&self) -> u64 {
        4 + 24 + 4 + 8 + 16 * self.sums.len() as u64 + 8 + 8 * self.slice.len() as u64 + 8 + 1
    }
}

/// A worker's final parameters, sent to worker 0.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SliceMsg {
    /// Sending worker (its slice is `NetworkSlice::new(.., from, peers)`).
    pub from: u32,
    /// Its parameters, in its local order.
    pub values: Vec<f64>,
}

/// What the operator emits.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LayerOut {
    /// A round's message, for every worker.
    Round(LayerMsg),
    /// The final parameters, for worker 0.
    Done(SliceMsg),
}

/// What the operator needs.
pub struct LayerContext {
    /// The slice's starting values (from the network's seeded
    /// initialisation, or a warm start).
    pub init: Vec<f64>,
    /// This worker's index.
    pub index: usize,
    /// Number of workers.
    pub peers: usize,
    /// Every row of the data, every column.
    pub data: WorkerData,
    /// This worker's part of the network.
    pub slice: NetworkSlice,
    /// The head.
    pub kind: ModelKind,
    /// First-order optimizer.
    pub optimizer: OptimizerSpec,
    /// Penalties.
    pub penalty: Penalty,
    /// Fit the biases.
    pub fit_intercept: bool,
    /// Epochs to run.
    pub epochs: u32,
    /// Steps per epoch.
    pub steps_per_epoch: u64,
    /// True if there are validation rows.
    pub has_validation: bool,
    /// The reference validation labels are taken relative to.
    pub label_ref: Option<f64>,
    /// Early stopping rule.
    pub early_stopping: Option<EarlyStopping>,
    /// Epoch records (kept on worker 0).
    pub records: Rc<RefCell<Vec<EpochRecord>>>,
    /// Set when training ends.
    pub finished: Rc<RefCell<Option<Finished>>>,
    /// Where this worker records a failure.
    pub failure: Rc<RefCell<Option<Failure>>>,
}

/// Extension trait: the network's model-parallel step.
pub trait LayerSteps<'scope> {
    /// Consumes every worker's message of a round and emits this worker's
    /// message of the next round (or its final parameters).
    fn layer_steps(self, ctx: LayerContext) -> StreamVec<'scope, u64, LayerOut>;
}

struct State {
    ctx: LayerContext,
    theta: Vec<f64>,
    best: Option<Vec<f64>>,
    opt: FirstOrderState,
    grad: Vec<f64>,
    live: LiveSet,
    epochs: Epochs,
    /// The rows of the round in flight: a step's, or the validation rows.
    rows: Block,
    /// This worker's slice of each hidden layer for those rows (as far as
    /// the forward pass has come).
    acts: Vec<Slice>,
    steps: u64,
    epoch_loss: Wide,
    epoch_rows: u64,
    /// Payload bytes this worker sent since the last evaluation.
    bytes: u64,
    done: bool,
}

impl State {
    fn fail(&mut self, e: &Error) -> Failure {
        let f = Failure::from(e);
        self.ctx.failure.borrow_mut().get_or_insert(f.clone());
        self.done = true;
        f
    }

    /// Fails on `e` and tells the other workers, in place of the round's
    /// message.
    fn fail_round(&mut self, e: &Error, phase: Phase, stage: u32, emit: &mut impl FnMut(LayerOut)) {
        let f = self.fail(e);
        let mut msg = self.message(phase, stage, Vec::new(), Vec::new());
        msg.failure = Some(f);
        emit(LayerOut::Round(msg));
    }

    /// Sends a round's message, counting its bytes.
    fn send(&mut self, mut msg: LayerMsg, emit: &mut impl FnMut(LayerOut)) {
        let others = self.ctx.peers.saturating_sub(1) as u64;
        self.bytes += others * msg.payload();
        if let Phase::Eval { .. } = msg.phase {
            if msg.stage as usize + 1 == self.ctx.slice.depth() {
                // The bytes since the last evaluation (its rounds
                // included) ride on its last round.
                msg.bytes = std::mem::take(&mut self.bytes);
            }
        }
        emit(LayerOut::Round(msg));
    }

    /// The first round of `phase`: the rows, the first layer, the first
    /// partials.
    fn begin(&mut self, phase: Phase, emit: &mut impl FnMut(LayerOut)) {
        let loaded = self.load(phase);
        let sums = loaded.and_then(|()| {
            let first = self.ctx.slice.first(&self.theta, &self.rows);
            self.acts.clear();
            self.acts.push(first);
            self.ctx
                .slice
                .partial(&self.theta, 0, &self.acts[0])
                .map_err(|m| diverged(phase, m))
        });
        match sums {
            Ok(sums) => self.send(self.message(phase, 0, sums, Vec::new()), emit),
            Err(e) => self.fail_round(&e, phase, 0, emit),
        }
    }

    fn message(&self, phase: Phase, stage: u32, sums: Vec<Exact>, slice: Vec<f64>) -> LayerMsg {
        LayerMsg {
            from: self.ctx.index as u32,
            phase,
            stage,
            sums,
            slice,
            bytes: 0,
            failure: None,
        }
    }

    /// The rows of `phase`: the step's, or every validation row.
    fn load(&mut self, phase: Phase) -> Result<(), Error> {
        self.rows.clear();
        let rows = &mut self.rows;
        match phase {
            Phase::Train { epoch, step } => {
                self.ctx.data.prepare(epoch)?;
                self.ctx.data.step_rows(step, |b, idx| {
                    rows.push_rows(b, idx);
                    Ok(())
                })
            }
            Phase::Eval { .. } => self.ctx.data.validation(|b| {
                let all: Vec<usize> = (0..b.rows).collect();
                rows.push_rows(b, &all);
            }),
            Phase::Refresh | Phase::Reduce | Phase::Final { .. } => Ok(()),
        }
    }

    /// A complete round: every worker's message of (`phase`, `stage`).
    fn round(&mut self, mut msgs: Vec<LayerMsg>, emit: &mut impl FnMut(LayerOut)) {
        if self.done {
            return;
        }
        if let Some(f) = msgs.iter().find_map(|m| m.failure.clone()) {
            self.ctx.failure.borrow_mut().get_or_insert(f);
            self.done = true;
            return;
        }
        msgs.sort_by_key(|m| m.from);
        let first = msgs.first().map(|m| (m.phase, m.stage));
        let consistent = msgs.len() == self.ctx.peers
            && msgs
                .iter()
                .enumerate()
                .all(|(w, m)| m.from as usize == w && Some((m.phase, m.stage)) == first);
        let Some((phase, stage)) = first.filter(|_| consistent) else {
            self.fail(&Error::Internal(format!(
                "network model-parallel round with {} of {} workers' messages",
                msgs.len(),
                self.ctx.peers
            )));
            return;
        };
        let depth = self.ctx.slice.depth() as u32;
        let outcome = if stage < depth {
            self.forward(phase, stage, &msgs, emit)
        } else {
            self.backward(phase, stage, &msgs, emit)
        };
        if let Err(e) = outcome {
            self.fail_round(&e, phase, stage, emit);
        }
    }

    /// A forward round: the summed pre-activations of the layer above
    /// hidden layer `stage`.
    fn forward(
        &mut self,
        phase: Phase,
        stage: u32,
        msgs: &[LayerMsg],
        emit: &mut impl FnMut(LayerOut),
    ) -> Result<(), Error> {
        let n = msgs[0].sums.len();
        if msgs.iter().any(|m| m.sums.len() != n) {
            return Err(Error::Internal(
                "workers sent partials of different sizes".into(),
            ));
        }
        // Integers: the same sum in any order, on any worker count.
        let whole: Vec<f64> = (0..n)
            .map(|i| {
                msgs.iter()
                    .fold(Exact::default(), |a, m| a + m.sums[i])
                    .to_f64()
            })
            .collect();
        let l = stage as usize;
        let depth = self.ctx.slice.depth();
        if l + 1 < depth {
            // The next hidden layer's slice, then its partials.
            let next = self.ctx.slice.activate(l + 1, &whole);
            self.acts.truncate(l + 1);
            self.acts.push(next);
            let sums = self
                .ctx
                .slice
                .partial(&self.theta, l + 1, &self.acts[l + 1])
                .map_err(|m| diverged(phase, m))?;
            self.send(self.message(phase, stage + 1, sums, Vec::new()), emit);
            return Ok(());
        }
        // The margins.
        match phase {
            Phase::Train { epoch, step } => self.top(epoch, step, &whole, emit),
            Phase::Eval { epoch, steps, .. } => {
                let bytes = msgs.iter().map(|m| m.bytes).sum::<u64>();
                let over = self.evaluate(epoch, steps, &whole, bytes)?;
                if over {
                    self.finish(epoch, emit);
                } else {
                    self.begin(Phase::Train { epoch, step: 0 }, emit);
                }
                Ok(())
            }
            Phase::Refresh | Phase::Reduce | Phase::Final { .. } => Ok(()),
        }
    }

    /// The loss and the top of the backward pass, from a step's margins.
    fn top(
        &mut self,
        epoch: u32,
        step: u64,
        margins: &[f64],
        emit: &mut impl FnMut(LayerOut),
    ) -> Result<(), Error> {
        let k = self.ctx.slice.width_above(self.ctx.slice.depth() - 1);
        let n = self.rows.rows;
        let mut dm = vec![0.0; k];
        let mut dz = Vec::with_capacity(n * k);
        let mut loss_sum = 0.0;
        for i in 0..n {
            loss_sum += loss::loss_and_grad(
                self.ctx.kind,
                &margins[i * k..(i + 1) * k],
                self.rows.label.at(i),
                &mut dm,
            );
            dz.extend_from_slice(&dm);
        }
        let phase = Phase::Train { epoch, step };
        self.epoch_loss +=
            Wide::from_f64(loss_sum).ok_or_else(|| diverged(phase, loss_message(loss_sum)))?;
        self.epoch_rows += n as u64;
        self.down(phase, self.ctx.slice.depth() - 1, &dz, emit)
    }

    /// The backward pass below the whole `∂loss/∂z` of the layer above
    /// hidden layer `l`: this worker's gradient of that layer's piece,
    /// then either the first layer's gradient and the step, or a gather
    /// round of hidden layer `l`'s slices.
    fn down(
        &mut self,
        phase: Phase,
        l: usize,
        dz_above: &[f64],
        emit: &mut impl FnMut(LayerOut),
    ) -> Result<(), Error> {
        let dz = self
            .ctx
            .slice
            .backward(&self.theta, l, dz_above, &self.acts[l], &mut self.grad);
        if l == 0 {
            self.ctx
                .slice
                .backward_first(&self.rows, &dz, &mut self.grad);
            let Phase::Train { epoch, step } = phase else {
                return Ok(());
            };
            self.step(epoch, step)?;
            let next = if step + 1 < self.ctx.steps_per_epoch {
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
            };
            self.begin(next, emit);
            return Ok(());
        }
        let depth = self.ctx.slice.depth() as u32;
        // Stage of the gather of hidden layer l's slices: L, L+1, … for
        // l = L−1, L−2, … (0-based).
        let stage = depth + (depth - 1 - l as u32);
        self.send(self.message(phase, stage, Vec::new(), dz), emit);
        Ok(())
    }

    /// A backward round: every worker's slice of hidden layer `l`'s
    /// `∂loss/∂z`, put together in unit order.
    fn backward(
        &mut self,
        phase: Phase,
        stage: u32,
        msgs: &[LayerMsg],
        emit: &mut impl FnMut(LayerOut),
    ) -> Result<(), Error> {
        let depth = self.ctx.slice.depth() as u32;
        let l = (depth - 1 - (stage - depth)) as usize;
        let rows = self.rows.rows;
        let width = self.ctx.slice.hidden_width(l);
        let mut whole = vec![0.0; rows * width];
        for (w, m) in msgs.iter().enumerate() {
            let units = crate::model::unit_split::unit_range(width, w, self.ctx.peers);
            if m.slice.len() != rows * units.len() {
                return Err(Error::Internal(format!(
                    "worker {w} sent {} of ∂z for {rows} rows × {} units",
                    m.slice.len(),
                    units.len()
                )));
            }
            for r in 0..rows {
                whole[r * width + units.start..r * width + units.end]
                    .copy_from_slice(&m.slice[r * units.len()..(r + 1) * units.len()]);
            }
        }
        self.down(phase, l - 1, &whole, emit)
    }

    /// The optimizer step on this worker's parameters from the step's
    /// summed gradient.
    fn step(&mut self, epoch: u32, step: u64) -> Result<(), Error> {
        let n = self.rows.rows;
        if n > 0 {
            let slice = &self.ctx.slice;
            let frozen = !self.ctx.fit_intercept;
            for (i, g) in self.grad.iter_mut().enumerate() {
                *g = update::mean(*g, n as u64, frozen && slice.is_bias(i));
            }
            let step_args = update::Step {
                spec: &self.ctx.optimizer,
                lr: update::rate(&self.ctx.optimizer, self.steps, epoch),
                penalty: self.ctx.penalty,
            };
            let bad = update::apply(
                step_args,
                &mut self.theta,
                &mut self.grad,
                &mut self.opt,
                &mut self.live,
                update::Visit::All,
                |i| !slice.is_bias(i),
            );
            if let Some(i) = bad {
                let g = slice.globals().get(i).copied().unwrap_or(0);
                return Err(update::diverged(epoch, step, g, self.theta[i]));
            }
        }
        self.steps += 1;
        Ok(())
    }

    /// Finishes an evaluation; returns true if training is over.
    fn evaluate(
        &mut self,
        epoch: u32,
        steps: u64,
        margins: &[f64],
        bytes: u64,
    ) -> Result<bool, Error> {
        let k = self.ctx.slice.width_above(self.ctx.slice.depth() - 1);
        let none = Labels::default();
        let labels = if self.ctx.has_validation {
            &self.rows.label
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

    /// Ends training after `epochs` epochs: the parameters (the best under
    /// early stopping) go to worker 0.
    fn finish(&mut self, epochs: u32, emit: &mut impl FnMut(LayerOut)) {
        self.done = true;
        *self.ctx.finished.borrow_mut() = Some(Finished { epochs });
        let keep = self.ctx.early_stopping.is_some();
        let values = match (keep, self.best.take()) {
            (true, Some(b)) => b,
            _ => std::mem::take(&mut self.theta),
        };
        emit(LayerOut::Done(SliceMsg {
            from: self.ctx.index as u32,
            values,
        }));
    }
}

/// A step or evaluation that went out of range.
fn diverged(phase: Phase, message: String) -> Error {
    let (epoch, step) = match phase {
        Phase::Train { epoch, step } => (epoch, step),
        Phase::Eval { epoch, .. } => (epoch.saturating_sub(1), 0),
        Phase::Refresh | Phase::Reduce | Phase::Final { .. } => (0, 0),
    };
    Error::Diverged {
        epoch,
        step,
        message: format!(
            "{message} (lower optimizer.learning_rate, or set data.standardize = true)"
        ),
    }
}

impl<'scope> LayerSteps<'scope> for Stream<'scope, u64, Vec<LayerMsg>> {
    fn layer_steps(self, ctx: LayerContext) -> StreamVec<'scope, u64, LayerOut> {
        // Non-zero starting values are live from the start.
        let mut live = LiveSet::default();
        ctx.init
            .iter()
            .enumerate()
            .filter(|(_, w)| **w != 0.0)
            .for_each(|(i, _)| live.insert(i));
        let mut state = State {
            theta: ctx.init.clone(),
            best: None,
            opt: FirstOrderState::starting_at(&ctx.optimizer, &ctx.init),
            grad: vec![0.0; ctx.slice.len()],
            live,
            epochs: Epochs::new(ctx.kind, ctx.has_validation, ctx.early_stopping.as_ref()),
            rows: Block::default(),
            acts: Vec::new(),
            steps: 0,
            epoch_loss: Wide::default(),
            epoch_rows: 0,
            bytes: 0,
            done: false,
            ctx,
        };
        self.unary_frontier(Local, "LayerSteps", move |cap0, _info| {
            let mut start = Some(cap0);
            let mut rounds = Rounds::default();
            move |(input, frontier), output| {
                if let Some(cap) = start.take() {
                    let mut session = output.session(&cap);
                    state.begin(Phase::Train { epoch: 0, step: 0 }, &mut |m| session.give(m));
                }
                input.for_each(|cap, data| rounds.add(cap, data, output.output_index()));
                while let Some((_, cap, msgs)) = rounds.pop_ready(frontier.frontier()) {
                    let mut session = output.session(&cap);
                    state.round(msgs, &mut |m| session.give(m));
                }
            }
        })
    }
}
