//! The gradient operator: on every worker, turns a round's parameters into
//! exact gradient partials per shard (training rounds) or evaluation
//! partials (evaluation rounds).

use std::cell::RefCell;
use std::ops::Range;
use std::rc::Rc;

use timely::dataflow::channels::pact::Pipeline as Local;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::{Stream, StreamVec};

use super::hooks::Hooks;
use super::rounds::Rounds;
use super::snapshot::{Cadence, Part, PartOf};
use super::{
    loss_message, owner, EvalMsg, Failure, GradMsg, LazyHeader, ParamMsg, Partial, Phase, Scalars,
    ShardValues, WorkerOut,
};
use crate::data::cache::WorkerData;
use crate::error::Error;
use crate::exact::{Bound, Exact, Wide};
use crate::metrics::EvalPartial;
use crate::model::{Model, Roles, Scratch};
use crate::optim::lazy::Reader;
use crate::optim::lbfgs::Convergence;

/// The final parameters, as seen by worker 0.
#[derive(Debug, Clone)]
pub struct FinalParams {
    /// Parameters.
    pub theta: Vec<f64>,
    /// The `Final` phase they came with.
    pub phase: Phase,
}

/// What the gradient operator needs.
pub struct GradientContext {
    /// The worker's data.
    pub data: WorkerData,
    /// The model (its parameters are set each round).
    pub model: Box<dyn Model>,
    /// The roles of its parameters.
    pub roles: Roles,
    /// Shard ranges of the parameter vector.
    pub shards: Vec<Range<usize>>,
    /// Where the final parameters go: `Some` only on the worker that keeps
    /// them (worker 0).
    pub result: Option<Rc<RefCell<Option<FinalParams>>>>,
    /// This worker's index.
    pub index: usize,
    /// Number of workers.
    pub peers: usize,
    /// Every worker folds every shard (`train.fold = "every-worker"`): a
    /// worker sends its gradients to every other worker and receives no
    /// parameters; otherwise to the shards' owners, whose parameters it
    /// receives.
    pub every_worker: bool,
    /// Where this worker records its own failure.
    pub failure: Rc<RefCell<Option<Failure>>>,
    /// A strategy whose workers step their own replica (`model-average`):
    /// what a training round computes instead of the plain gradient.
    pub replica: Option<Box<dyn Replica>>,
    /// How far this worker may read ahead (`param-server`).
    pub read_ahead: ReadAhead,
    /// Steps per epoch (to tell how stale a read is, and to number steps).
    pub steps_per_epoch: u64,
    /// Test hooks (slowed worker, step trace).
    pub hooks: Hooks,
    /// Lazy updates whose untouched weights move: the worker's copy of
    /// what the owners published, read at the step of each round.
    pub reader: Option<Reader>,
    /// The reference validation labels are taken relative to (regression:
    /// the training label mean), the same on every worker.
    pub label_ref: Option<f64>,
    /// Checkpoints, if the job takes them: replicas send their state at
    /// every evaluation and where a checkpoint falls inside an epoch.
    pub cadence: Option<Cadence>,
    /// The training loss and rows of the epoch so far (a job resumed
    /// inside an epoch, on worker 0; zero otherwise).
    pub epoch_start: (Wide, u64),
}

/// Reading ahead of the slowest worker: the mechanism of bounded staleness.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadAhead {
    /// How many rounds ahead of the slowest worker this one may compute
    /// (0 = synchronous). Fresher shards that have already arrived for
    /// later rounds are read instead of the round's own.
    pub lag: u64,
    /// Count the staleness of every shard read (for the epoch records).
    pub record_staleness: bool,
}

/// What a replica's local steps work with: the worker's data, the model
/// (whose parameters are the replica) and the operator's buffers.
pub struct Workspace<'a> {
    /// The worker's data.
    pub data: &'a mut WorkerData,
    /// The model; its parameters are what the owners sent, then the replica.
    pub model: &'a mut dyn Model,
    /// The roles of its parameters.
    pub roles: &'a Roles,
    /// Per-row scratch of the gradient computation.
    pub scratch: &'a mut Scratch,
    /// The exact accumulator, all zero on entry; on return it holds the
    /// values to send on the coordinates returned.
    pub acc: &'a mut Vec<Exact>,
}

/// A worker that trains replicas of the model (`model-average`) instead of
/// sending the gradient of each step: the strategy's side of the gradient
/// operator. Between rounds the model's parameters are what the owners
/// sent: a round leaves them so.
pub trait Replica {
    /// A shard's values arrived from its owner (whole or as changes), to be
    /// applied to `theta`, which holds what the owners sent before them.
    fn received(&mut self, theta: &[f64], range: Range<usize>, values: &ShardValues);

    /// Trains the replica through the round that starts at step `step` of
    /// `epoch`. Returns the coordinates (sorted) whose values it left in the
    /// accumulator for the owners, with the exact loss sum, the rows and the
    /// [`Bound`] of those values.
    #[allow(clippy::type_complexity)]
    fn train(
        &mut self,
        ws: Workspace<'_>,
        epoch: u32,
        step: u64,
    ) -> Result<(Vec<usize>, Wide, u64, Bound), Error>;

    /// The steps of the round that starts at step `step` of an epoch.
    fn round_steps(&self, step: u64) -> u64;

    /// The replica's own state between rounds (its optimizer state, not
    /// the weights, which the owners hold), for a checkpoint.
    fn save(&self) -> Vec<u8>;
}

/// Extension trait: compute gradient partials from broadcast parameters.
pub trait Gradients<'scope> {
    /// Consumes every shard's parameters for a round (all workers see all
    /// shards) and emits one [`GradMsg`] per shard, or one [`EvalMsg`].
    fn gradients(self, ctx: GradientContext) -> StreamVec<'scope, u64, WorkerOut>;
}

struct State {
    ctx: GradientContext,
    scratch: Scratch,
    epoch_loss: Wide,
    epoch_rows: u64,
    /// Payload bytes this worker received from or sent to other workers
    /// since the last evaluation.
    epoch_bytes: u64,
    /// Shard reads by staleness since the last evaluation.
    staleness: Vec<u64>,
    /// Per shard: (emission seq, optimizer version) of the values held.
    held: Vec<(u64, u64)>,
    /// Lazy updates: per shard, the optimizer step of the values held.
    held_step: Vec<u64>,
    /// Lazy updates: parameters brought up to date for the round's reads,
    /// to be set back to what was published after it.
    fetched: Vec<usize>,
    /// Gradient accumulator, all zero between steps.
    acc: Vec<Exact>,
    /// A bitmap of coordinates, all clear between steps (see
    /// [`sorted_unique`]).
    seen: Vec<u64>,
    stopped: bool,
}

/// `indices` (repeats allowed) increasing and without repeats, through
/// `bits`, a bitmap left clear: linear in the indices and the span they
/// cover, where sorting them would take `n log n` (a hashed model's
/// units touch the same slots again and again).
fn sorted_unique(indices: impl Iterator<Item = usize>, bits: &mut Vec<u64>) -> Vec<usize> {
    let (mut lo, mut hi) = (usize::MAX, 0);
    for i in indices {
        let w = i / 64;
        if w >= bits.len() {
            bits.resize(w + 1, 0);
        }
        bits[w] |= 1 << (i % 64);
        lo = lo.min(w);
        hi = hi.max(w + 1);
    }
    let mut out = Vec::new();
    for (w, word) in bits.iter_mut().enumerate().take(hi).skip(lo) {
        let mut b = std::mem::take(word);
        while b != 0 {
            out.push(w * 64 + b.trailing_zeros() as usize);
            b &= b - 1;
        }
    }
    out
}

/// Serialized bytes of a [`Phase`] (bincode layout: a 4-byte variant
/// index, then the fields; an `Option` is a 1-byte tag and its value).
fn phase_bytes(phase: &Phase) -> u64 {
    let option = |o: &Option<f64>| 1 + o.map_or(0, |_| 8);
    4 + match phase {
        Phase::Train { .. } => 4 + 8,
        Phase::Eval { objective, .. } => 4 + 8 + option(objective),
        Phase::Refresh | Phase::Reduce => 0,
        Phase::Final {
            objective,
            converged_by,
            ..
        } => 4 + option(objective) + 1 + converged_by.map_or(0, convergence_bytes),
    }
}

/// Serialized bytes of a [`Convergence`]: the variant index and its value.
fn convergence_bytes(c: Convergence) -> u64 {
    4 + match c {
        Convergence::Gradient(_) | Convergence::ObjectiveChange(_) => 8,
        Convergence::NoDecrease => 0,
    }
}

/// Payload bytes of a parameter message of `phase` carrying `values`
/// (bincode layout: shard, phase, version, seq, values, and the tag of the
/// lazy header, whose bytes [`LazyHeader::bytes`] counts when there is one,
/// and the scalars).
pub fn param_bytes(phase: &Phase, values: &ShardValues, scalars: &Scalars) -> u64 {
    4 + phase_bytes(phase) + 8 + 8 + values.bytes() + 1 + scalars.bytes()
}

/// Payload bytes of a gradient message carrying `values` and `reduced`
/// (bincode layout: shard, values, 256-bit loss, 128-bit bound, rows,
/// reduced scalars, no failure).
pub fn grad_msg_bytes(values: &Partial, reduced: &Scalars) -> u64 {
    4 + values.bytes() + 32 + 16 + 8 + reduced.bytes() + 1
}

/// Payload bytes of a gradient message with `n` dense values (and no
/// scalars).
pub fn grad_bytes(n: usize) -> u64 {
    grad_msg_bytes(
        &Partial::Dense(vec![Exact::default(); n]),
        &Scalars::default(),
    )
}

/// A worker's output of a training round: a partial per shard, the exact
/// loss sum, the rows, and the partials' [`Bound`].
type TrainOut = (Vec<Partial>, Wide, u64, Bound);

impl State {
    /// Applies a shard message if it is the next of its shard (or whole);
    /// one already applied (read ahead) is skipped. `Ok(false)`: an earlier
    /// change of the shard has not arrived yet.
    fn apply(&mut self, m: &ParamMsg) -> Result<bool, String> {
        let k = m.shard as usize;
        let range = self
            .ctx
            .shards
            .get(k)
            .ok_or_else(|| format!("unknown shard {k}"))?
            .clone();
        let (seq, _) = self.held[k];
        if m.seq <= seq {
            return Ok(true);
        }
        if let (Some(reader), Some(h)) = (self.ctx.reader.as_mut(), m.lazy.as_ref()) {
            if !matches!(m.values, ShardValues::Dense(_)) && m.seq != seq + 1 {
                return Ok(false);
            }
            if !reader.record(h.stamp) {
                return Err(format!("shard {k} skipped an optimizer step"));
            }
            let roles = &self.ctx.roles;
            let t = h.stamp.t;
            for &(i, z, n) in &h.state {
                let i = range.start + i as usize;
                if i >= range.end {
                    return Err(format!("shard {k} does not fit its range"));
                }
                self.ctx.model.params_mut()[i] =
                    reader.publish_state(i, z, n, t, !roles.is_intercept(i));
            }
            match &m.values {
                ShardValues::Dense(v) if v.len() == range.len() => v
                    .iter()
                    .enumerate()
                    .for_each(|(i, &w)| reader.publish(range.start + i, w, t)),
                ShardValues::Delta(e) if e.iter().all(|&(i, _)| (i as usize) < range.len()) => e
                    .iter()
                    .for_each(|&(i, w)| reader.publish(range.start + i as usize, w, t)),
                _ => return Err(format!("shard {k} does not fit its range")),
            }
            if h.flushed {
                reader.flushed(range.clone(), t);
            }
            self.held_step[k] = t;
        }
        match &m.values {
            ShardValues::Dense(v) if v.len() == range.len() => {}
            ShardValues::Delta(_) if m.seq != seq + 1 => return Ok(false),
            ShardValues::Delta(e) if e.iter().all(|&(i, _)| (i as usize) < range.len()) => {}
            _ => return Err(format!("shard {k} does not fit its range")),
        }
        if let Some(replica) = self.ctx.replica.as_mut() {
            replica.received(self.ctx.model.params(), range.clone(), &m.values);
        }
        let theta = &mut self.ctx.model.params_mut()[range];
        match &m.values {
            ShardValues::Dense(v) => theta.copy_from_slice(v),
            ShardValues::Delta(e) => e.iter().for_each(|&(i, v)| theta[i as usize] = v),
        }
        self.held[k] = (m.seq, m.version);
        Ok(true)
    }

    fn assemble(&mut self, msgs: &[ParamMsg]) -> Result<Phase, String> {
        let n = self.ctx.shards.len();
        let mut seen = vec![false; n];
        let phase = msgs
            .first()
            .map(|m| m.phase)
            .ok_or("no parameters arrived")?;
        for m in msgs {
            if m.phase != phase || !self.apply(m)? {
                return Err(format!("shard {} is inconsistent with the round", m.shard));
            }
            if let Some(s) = seen.get_mut(m.shard as usize) {
                *s = true;
            }
        }
        if let Some(k) = seen.iter().position(|s| !s) {
            return Err(format!("shard {k} did not arrive (its owner stopped)"));
        }
        Ok(phase)
    }

    /// One partial per shard from the accumulator, given the coordinates
    /// (sorted, distinct) outside which it is zero; clears them.
    fn take_partials(&mut self, touched: &[usize]) -> Vec<Partial> {
        let mut partials = Vec::with_capacity(self.ctx.shards.len());
        let mut rest = touched;
        for range in &self.ctx.shards {
            let (mine, after) = rest.split_at(rest.partition_point(|&i| i < range.end));
            rest = after;
            partials.push(Partial::from_touched(
                &self.acc[range.clone()],
                range.start,
                mine,
            ));
        }
        touched.iter().for_each(|&i| self.acc[i] = Exact::default());
        partials
    }

    /// The gradient partials of step `step` of `epoch`, one per shard.
    ///
    /// The accumulator is kept between steps; only the coordinates a step
    /// touched are read and cleared, so a step of a wide hashed model costs
    /// what its rows touch, not the size of the model.
    fn train(&mut self, epoch: u32, step: u64) -> Result<TrainOut, Error> {
        self.ctx.data.prepare(epoch)?;
        let roles = &self.ctx.roles;
        if self.acc.len() != roles.len() {
            self.acc = vec![Exact::default(); roles.len()];
        }
        let mut loss = Wide::default();
        let mut rows = 0u64;
        let mut bound = Bound::default();
        let model = &mut self.ctx.model;
        let scratch = &mut self.scratch;
        let acc = &mut self.acc;
        let (reader, fetched) = (self.ctx.reader.as_ref(), &mut self.fetched);
        let (shards, held_step) = (&self.ctx.shards, &self.held_step);
        let diverged = |message: String| Error::Diverged {
            epoch,
            step,
            message,
        };
        // Under allreduce every shard is at the same step.
        let same = held_step.iter().all(|&t| Some(&t) == held_step.first());
        let step_of = |j: usize| match (same, held_step.first()) {
            (true, Some(&t)) => t,
            _ => held_step
                .get(shards.partition_point(|s| s.end <= j))
                .copied()
                .unwrap_or(0),
        };
        let mut coords = Vec::new();
        let fed = self.ctx.data.step_rows(step, |block, idx| {
            if let Some(reader) = reader {
                // The weights at the step each shard is at, not as published.
                for &r in idx {
                    coords.clear();
                    model.sparse_coords(block, r, &mut |j| coords.push(j));
                    let theta = model.params_mut();
                    for &j in &coords {
                        let t = step_of(j);
                        if !reader.is_current(j, t) {
                            theta[j] = reader.read(j, t, !roles.is_intercept(j));
                            fetched.push(j);
                        }
                    }
                }
            }
            let (l, b) = model
                .accumulate(block, idx, scratch, acc.into())
                .map_err(diverged)?;
            loss += Wide::from_f64(l).ok_or_else(|| diverged(loss_message(l)))?;
            bound += b;
            rows += idx.len() as u64;
            Ok(())
        });
        if let Some(reader) = reader {
            let theta = model.params_mut();
            for j in fetched.drain(..) {
                theta[j] = reader.published(j);
            }
        }
        fed?;
        let dense = self.ctx.roles.dense_indices().iter().copied();
        let touched = sorted_unique(dense.chain(self.scratch.drain_touched()), &mut self.seen);
        Ok((self.take_partials(&touched), loss, rows, bound))
    }

    fn evaluate(&mut self) -> Result<EvalPartial, Error> {
        let mut partial = EvalPartial::with_label_ref(self.ctx.label_ref);
        let model = self.ctx.model.as_ref();
        self.ctx
            .data
            .validation(|block| partial.add_block(model, block))?;
        Ok(partial)
    }

    /// One training round (plain or local replica), through the test hooks.
    fn train_traced(&mut self, epoch: u32, step: u64) -> Result<TrainOut, Error> {
        let hooks = std::mem::take(&mut self.ctx.hooks);
        let out = hooks.step(
            u64::from(epoch) * self.ctx.steps_per_epoch + step,
            || match self.ctx.replica.as_mut() {
                Some(replica) => {
                    let ws = Workspace {
                        data: &mut self.ctx.data,
                        model: self.ctx.model.as_mut(),
                        roles: &self.ctx.roles,
                        scratch: &mut self.scratch,
                        acc: &mut self.acc,
                    };
                    let (coords, loss, rows, bound) = replica.train(ws, epoch, step)?;
                    Ok((self.take_partials(&coords), loss, rows, bound))
                }
                None => self.train(epoch, step),
            },
        );
        self.ctx.hooks = hooks;
        out
    }

    /// `param-server`: brings each shard to the freshest version that has
    /// already arrived for a later round, and counts how stale the shards
    /// read for step `step` of `epoch` are.
    fn read_fresher(&mut self, fresher: &[&ParamMsg], epoch: u32, step: u64) {
        for m in fresher {
            // A gap (`Ok(false)`) or a bad message is met again in its own round.
            let _ = self.apply(m);
        }
        if self.ctx.read_ahead.record_staleness {
            let synchronous = u64::from(epoch) * self.ctx.steps_per_epoch + step;
            for k in 0..self.held.len() {
                let behind = synchronous.saturating_sub(self.held[k].1) as usize;
                if self.staleness.len() <= behind {
                    self.staleness.resize(behind + 1, 0);
                }
                self.staleness[behind] += 1;
            }
        }
    }

    /// Sends the replica's state, if there is one, for a checkpoint at step
    /// count `position` after `epoch` epochs.
    fn save_replica(&self, position: u64, epoch: u32, emit: &mut impl FnMut(WorkerOut)) {
        if let Some(r) = self.ctx.replica.as_ref() {
            emit(WorkerOut::Saved(Part {
                position,
                epoch,
                worker: self.ctx.index as u32,
                of: PartOf::Replica,
                bytes: r.save(),
            }));
        }
    }

    /// After the training round at step `step` of `epoch`: the replica's
    /// state, if a checkpoint falls at the end of the round inside the
    /// epoch (the owners decide alike).
    fn save_replica_inside(&self, epoch: u32, step: u64, emit: &mut impl FnMut(WorkerOut)) {
        let (Some(cadence), Some(r)) = (self.ctx.cadence, self.ctx.replica.as_ref()) else {
            return;
        };
        let spe = self.ctx.steps_per_epoch;
        let k = r.round_steps(step);
        let position = u64::from(epoch) * spe + step + k;
        if step + k < spe && cadence.due_at_step(position, k) {
            self.save_replica(position, epoch, emit);
        }
    }

    /// How many other workers shard `k`'s gradient message goes to.
    fn sent_to(&self, k: usize) -> u64 {
        if self.ctx.every_worker {
            self.ctx.peers as u64 - 1
        } else {
            u64::from(owner(k as u32, self.ctx.peers) != self.ctx.index)
        }
    }

    /// Answers a round with `failure` instead of results: every shard
    /// owner (training) or the collector (evaluation) then stops.
    fn fail_round(&self, msgs: &[ParamMsg], f: Failure, emit: &mut impl FnMut(WorkerOut)) {
        match msgs.first().map(|m| m.phase) {
            Some(Phase::Train { .. } | Phase::Reduce) => {
                for k in 0..self.ctx.shards.len() {
                    emit(WorkerOut::Grad(GradMsg {
                        shard: k as u32,
                        values: Partial::Dense(Vec::new()),
                        loss: Wide::default(),
                        bound: Bound::default(),
                        rows: 0,
                        reduced: Scalars::default(),
                        failure: Some(f.clone()),
                    }));
                }
            }
            Some(phase @ Phase::Eval { .. }) => emit(WorkerOut::Eval(Box::new(EvalMsg {
                phase,
                validation: EvalPartial::default(),
                train_loss: Wide::default(),
                train_rows: 0,
                bytes: 0,
                staleness: Vec::new(),
                failure: Some(f),
            }))),
            _ => {}
        }
    }

    fn round(
        &mut self,
        msgs: Vec<ParamMsg>,
        fresher: &[&ParamMsg],
        emit: &mut impl FnMut(WorkerOut),
    ) {
        if self.stopped {
            return;
        }
        // Another operator of this worker failed (a checkpoint that could
        // not be written): stop the job as a failed step would.
        let elsewhere = self.ctx.failure.borrow().clone();
        if let Some(f) = elsewhere {
            self.stopped = true;
            self.fail_round(&msgs, f, emit);
            return;
        }
        for m in msgs.iter().filter(|_| !self.ctx.every_worker) {
            if owner(m.shard, self.ctx.peers) != self.ctx.index {
                self.epoch_bytes += param_bytes(&m.phase, &m.values, &m.scalars)
                    + m.lazy.as_ref().map_or(0, LazyHeader::bytes);
            }
        }
        if msgs.iter().all(|m| m.phase == Phase::Refresh) {
            // Fresher shards for workers running ahead: keep the sequence.
            for m in &msgs {
                if self.apply(m).is_err() {
                    self.stopped = true;
                }
            }
            return;
        }
        let phase = match self.assemble(&msgs) {
            Ok(p) => p,
            Err(_) => {
                // Another worker failed and its shard owner stopped: so do we.
                self.stopped = true;
                return;
            }
        };
        if let (Phase::Eval { .. }, Some(reader)) = (phase, self.ctx.reader.as_mut()) {
            // Every shard was flushed: nothing is behind its step any more.
            reader.forget_before(self.held_step.iter().copied().min().unwrap_or(0));
        }
        if let Phase::Train { epoch, step } = phase {
            if self.ctx.read_ahead.record_staleness || !fresher.is_empty() {
                self.read_fresher(fresher, epoch, step);
            }
        }
        // Sharded L-BFGS: the owners' scalars, totalled in shard order
        // (the same bits on every worker, whatever the worker count).
        let reduced = match reduce_scalars(&msgs) {
            Ok(r) => r,
            Err(message) => {
                let f = Failure::from(&Error::Internal(format!("round {phase:?}: {message}")));
                *self.ctx.failure.borrow_mut() = Some(f.clone());
                self.stopped = true;
                self.fail_round(&msgs, f, emit);
                return;
            }
        };
        match phase {
            Phase::Reduce => {
                for (k, range) in self.ctx.shards.iter().enumerate() {
                    let values = Partial::Sparse {
                        len: range.len() as u32,
                        entries: Vec::new(),
                    };
                    self.epoch_bytes += self.sent_to(k) * grad_msg_bytes(&values, &reduced);
                    emit(WorkerOut::Grad(GradMsg {
                        shard: k as u32,
                        values,
                        loss: Wide::default(),
                        bound: Bound::default(),
                        rows: 0,
                        reduced: reduced.clone(),
                        failure: None,
                    }));
                }
            }
            Phase::Train { .. } if self.ctx.hooks.silenced() => self.stopped = true,
            Phase::Train { epoch, step } => match self.train_traced(epoch, step) {
                Ok((partials, loss, rows, bound)) => {
                    self.epoch_loss += loss;
                    self.epoch_rows += rows;
                    // Asked to stop (SIGINT, SIGTERM): every owner learns it
                    // from this round's messages, so all stop at one point.
                    let stop = self
                        .ctx
                        .cadence
                        .and(crate::io::signals::stop_requested())
                        .map(|signal| {
                            Failure::from(&Error::Stopped {
                                signal,
                                worker: self.ctx.index,
                            })
                        });
                    for (k, values) in partials.into_iter().enumerate() {
                        self.epoch_bytes += self.sent_to(k) * grad_msg_bytes(&values, &reduced);
                        emit(WorkerOut::Grad(GradMsg {
                            shard: k as u32,
                            values,
                            loss,
                            bound,
                            rows,
                            reduced: reduced.clone(),
                            failure: stop.clone(),
                        }));
                    }
                    self.save_replica_inside(epoch, step, emit);
                }
                Err(e) => {
                    let f = Failure::from(&e);
                    *self.ctx.failure.borrow_mut() = Some(f.clone());
                    self.stopped = true;
                    self.fail_round(&msgs, f, emit);
                }
            },
            Phase::Eval { .. } => {
                let (validation, failure) = match self.evaluate() {
                    Ok(p) => (p, None),
                    Err(e) => {
                        let f = Failure::from(&e);
                        *self.ctx.failure.borrow_mut() = Some(f.clone());
                        self.stopped = true;
                        (EvalPartial::default(), Some(f))
                    }
                };
                if let (Phase::Eval { epoch, steps, .. }, Some(_)) = (phase, &self.ctx.cadence) {
                    // At every evaluation: the owners decide whether a
                    // checkpoint falls there.
                    self.save_replica(steps, epoch, emit);
                }
                emit(WorkerOut::Eval(Box::new(EvalMsg {
                    phase,
                    validation,
                    train_loss: std::mem::take(&mut self.epoch_loss),
                    train_rows: std::mem::take(&mut self.epoch_rows),
                    bytes: std::mem::take(&mut self.epoch_bytes),
                    staleness: std::mem::take(&mut self.staleness),
                    failure,
                })));
            }
            Phase::Final { .. } if self.ctx.result.is_some() => {
                let Some(result) = self.ctx.result.as_ref() else {
                    return;
                };
                *result.borrow_mut() = Some(FinalParams {
                    theta: self.ctx.model.params().to_vec(),
                    phase,
                });
            }
            Phase::Final { .. } | Phase::Refresh => {}
        }
    }
}

/// Whether `msgs` hold exactly one message for each of `shards` shards.
fn every_shard_once(msgs: &[ParamMsg], shards: usize) -> bool {
    shards > 0 && msgs.len() == shards && {
        let mut seen = vec![false; shards];
        msgs.iter().all(|m| {
            seen.get_mut(m.shard as usize)
                .is_some_and(|s| !std::mem::replace(s, true))
        })
    }
}

/// The total of the messages' scalars over the shards, in shard order; an
/// error if their layouts differ (owners out of step: a bug).
fn reduce_scalars(msgs: &[ParamMsg]) -> Result<Scalars, String> {
    let mut total = Scalars::default();
    let Some(first) = msgs.first() else {
        return Ok(total);
    };
    if let Some(m) = msgs.iter().find(|m| !m.scalars.same_layout(&first.scalars)) {
        return Err(format!(
            "the scalars of shards {} and {} do not have one layout",
            first.shard, m.shard
        ));
    }
    let mut by_shard: Vec<&ParamMsg> = msgs.iter().collect();
    by_shard.sort_by_key(|m| m.shard);
    for m in by_shard {
        total.add(&m.scalars);
    }
    Ok(total)
}

impl<'scope> Gradients<'scope> for Stream<'scope, u64, Vec<ParamMsg>> {
    fn gradients(self, ctx: GradientContext) -> StreamVec<'scope, u64, WorkerOut> {
        let lag = ctx.read_ahead.lag;
        let held = vec![(0, 0); ctx.shards.len()];
        let (epoch_loss, epoch_rows) = ctx.epoch_start;
        let mut state = State {
            ctx,
            scratch: Scratch::default(),
            epoch_loss,
            epoch_rows,
            epoch_bytes: 0,
            staleness: Vec::new(),
            held_step: vec![0; held.len()],
            held,
            fetched: Vec::new(),
            acc: Vec::new(),
            seen: Vec::new(),
            stopped: false,
        };
        let scope = self.scope();
        // A synchronous round brings one message per shard, each from its
        // owner: with all of them here the round is complete, before the
        // owners' progress messages say so.
        let shards = state.ctx.shards.len();
        let complete = move |msgs: &[ParamMsg]| lag == 0 && every_shard_once(msgs, shards);
        self.unary_frontier(Local, "Gradients", move |_cap, info| {
            let activator = scope.activator_for(info.address);
            let mut rounds = Rounds::default();
            move |(input, frontier), output| {
                input.for_each(|cap, data| rounds.add(cap, data, output.output_index()));
                if let Some(t) = rounds.late() {
                    // The next round fails, and with it the job.
                    state.ctx.failure.borrow_mut().get_or_insert_with(|| {
                        Failure::from(&Error::Internal(format!(
                            "parameters for round {t} came after the round was taken as complete"
                        )))
                    });
                }
                // One round per activation: its gradients and progress reach
                // the other workers before this one starts the next round.
                let Some((t, first)) = rounds.ready_by(frontier.frontier(), complete) else {
                    return;
                };
                let trains = first
                    .first()
                    .is_some_and(|m| matches!(m.phase, Phase::Train { .. }));
                if let Some(wait) = trains.then(|| state.ctx.hooks.hold(t)).flatten() {
                    activator.activate_after(wait);
                    return;
                }
                if let Some((t, cap, msgs)) = rounds.pop_ready_by(frontier.frontier(), complete) {
                    // Rounds up to `lag` later may already hold fresher shards.
                    let fresher: Vec<&ParamMsg> = rounds.buffered(t + 1..=t + lag).collect();
                    let mut session = output.session(&cap);
                    state.round(msgs, &fresher, &mut |m| session.give(m));
                }
                if rounds.ready_by(frontier.frontier(), complete).is_some() {
                    activator.activate();
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use timely::dataflow::channels::ContainerBytes;

    /// The bytes timely puts on the wire for a batch of `msgs`.
    fn timely_bytes<T: serde::Serialize + for<'a> serde::Deserialize<'a>>(msgs: Vec<T>) -> Vec<u8> {
        let mut out = Vec::new();
        msgs.into_bytes(&mut out);
        out
    }

    /// The serialized length of one message as timely sends it: a batch of
    /// one is an 8-byte count, the message, then zero padding to 8 bytes.
    fn real_len<T: serde::Serialize + for<'a> serde::Deserialize<'a> + Clone>(m: &T) -> u64 {
        let own = bincode::serialize(m).unwrap();
        let wire = timely_bytes(vec![m.clone()]);
        assert_eq!(wire[..8], 1u64.to_le_bytes(), "a batch of one");
        assert_eq!(
            wire[8..8 + own.len()],
            own[..],
            "timely sends the bincode bytes"
        );
        assert!(wire[8 + own.len()..].iter().all(|&b| b == 0));
        assert_eq!(wire.len(), (8 + own.len()).div_ceil(8) * 8);
        own.len() as u64
    }

    /// A round's parameters are complete before the frontier only with
    /// exactly one message for each shard.
    #[test]
    fn every_shard_once_needs_each_shard_exactly_once() {
        let of = |shards: &[u32]| -> Vec<ParamMsg> {
            shards
                .iter()
                .map(|&shard| ParamMsg {
                    shard,
                    phase: Phase::Refresh,
                    version: 0,
                    seq: 1,
                    values: ShardValues::Delta(Vec::new()),
                    lazy: None,
                    scalars: Scalars::default(),
                })
                .collect()
        };
        assert!(every_shard_once(&of(&[2, 0, 1]), 3));
        for shards in [&[0, 1][..], &[0, 1, 1], &[0, 1, 3], &[0, 1, 2, 2]] {
            assert!(!every_shard_once(&of(shards), 3), "{shards:?}");
        }
        assert!(!every_shard_once(&of(&[]), 0));
    }

    fn exacts(n: usize) -> Vec<Exact> {
        (0..n)
            .map(|i| Exact(if i % 3 == 0 { 0 } else { (i as i128 - 7) << 90 }))
            .collect()
    }

    fn partials() -> Vec<Partial> {
        let mut v = vec![
            Partial::Dense(Vec::new()),
            Partial::Dense(exacts(1)),
            Partial::Dense(exacts(31)),
            Partial::Sparse {
                len: 1000,
                entries: Vec::new(),
            },
            Partial::Sparse {
                len: 1 << 20,
                entries: vec![
                    (0, Exact(-1)),
                    (17, Exact(i128::MAX)),
                    (1 << 19, Exact(i128::MIN)),
                ],
            },
        ];
        let mut wide = vec![Exact(0); 5000];
        wide[4] = Exact(3);
        wide[4999] = Exact(-5);
        v.push(Partial::from_slice(&wide));
        v.push(Partial::from_slice(&[Exact(-9); 64]));
        assert!(matches!(v[5], Partial::Sparse { .. }) && matches!(v[6], Partial::Dense(_)));
        v
    }

    #[test]
    fn partial_and_gradient_message_sizes_are_the_serialized_sizes() {
        let losses = [
            Wide::default(),
            Wide::from_f64(-3.5e40).unwrap(),
            Wide::OVERFLOW,
        ];
        for (i, values) in partials().into_iter().enumerate() {
            assert_eq!(values.bytes(), real_len(&values), "{values:?}");
            let m = GradMsg {
                shard: i as u32 * 1000,
                loss: losses[i % losses.len()],
                bound: Bound(u128::MAX >> i),
                rows: u64::MAX - i as u64,
                reduced: if i % 2 == 0 {
                    Scalars::default()
                } else {
                    Scalars {
                        sums: vec![1.5; i],
                        maxes: vec![2.0],
                    }
                },
                failure: None,
                values,
            };
            assert_eq!(grad_msg_bytes(&m.values, &m.reduced), real_len(&m), "{m:?}");
        }
        assert_eq!(
            grad_bytes(31),
            real_len(&GradMsg {
                shard: 0,
                values: Partial::Dense(vec![Exact(1); 31]),
                loss: Wide::default(),
                bound: Bound(0),
                rows: 0,
                reduced: Scalars::default(),
                failure: None,
            })
        );
    }

    #[test]
    fn parameter_message_sizes_are_the_serialized_sizes() {
        let values = [
            ShardValues::Dense(Vec::new()),
            ShardValues::Dense(vec![-0.5; 31]),
            ShardValues::Delta(Vec::new()),
            ShardValues::Delta(vec![(0, 1.0), (u32::MAX, f64::MIN)]),
            ShardValues::diff(Some(&[0.0; 100]), &[1.0; 100]),
            ShardValues::diff(Some(&[0.0; 100]), &[0.0; 100]),
        ];
        let phases = [
            Phase::Train {
                epoch: 3,
                step: u64::MAX,
            },
            Phase::Eval {
                epoch: 1,
                steps: 9,
                objective: Some(0.25),
            },
            Phase::Eval {
                epoch: 1,
                steps: 9,
                objective: None,
            },
            Phase::Refresh,
            Phase::Reduce,
            Phase::Final {
                epochs: 7,
                objective: Some(1.0),
                converged_by: Some(Convergence::Gradient(1e-6)),
            },
            Phase::Final {
                epochs: 7,
                objective: Some(1.0),
                converged_by: Some(Convergence::NoDecrease),
            },
            Phase::Final {
                epochs: 7,
                objective: None,
                converged_by: None,
            },
        ];
        for v in &values {
            assert_eq!(v.bytes(), real_len(v), "{v:?}");
            for phase in phases {
                // Eager, lazy with weights only, lazy with FTRL's state.
                for state in [
                    None,
                    Some(vec![]),
                    Some(vec![(1, 0.5, 2.0), (3, -1.0, 4.0)]),
                ] {
                    let m = ParamMsg {
                        shard: 5,
                        phase,
                        version: 11,
                        seq: 12,
                        values: v.clone(),
                        lazy: state.map(|state| LazyHeader {
                            stamp: crate::optim::lazy::Stamp::default(),
                            flushed: true,
                            state,
                        }),
                        scalars: match phase {
                            Phase::Reduce => Scalars {
                                sums: vec![0.25; 7],
                                maxes: vec![1.0],
                            },
                            _ => Scalars::default(),
                        },
                    };
                    let header = m.lazy.as_ref().map_or(0, LazyHeader::bytes);
                    assert_eq!(
                        param_bytes(&m.phase, &m.values, &m.scalars) + header,
                        real_len(&m),
                        "{m:?}"
                    );
                }
            }
        }
    }

    proptest::proptest! {
        /// The bitmap gives what sorting and deduplicating give, and is
        /// left clear for the next step.
        #[test]
        fn sorted_unique_is_sort_and_dedup(
            indices in proptest::collection::vec(
                proptest::prop_oneof![0usize..200, 0usize..300_000],
                0..300,
            ),
            words in 0usize..10,
        ) {
            let mut bits = vec![0u64; words];
            let got = sorted_unique(indices.iter().copied(), &mut bits);
            let mut want = indices.clone();
            want.sort_unstable();
            want.dedup();
            proptest::prop_assert_eq!(&got, &want);
            proptest::prop_assert!(bits.iter().all(|&w| w == 0));
            let again = sorted_unique(indices.iter().copied().rev(), &mut bits);
            proptest::prop_assert_eq!(again, want);
        }
    }
}
