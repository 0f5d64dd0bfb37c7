//! The round state machine of the shard owners: which phase comes next and
//! what the owned shards' parameters are. Every owner runs the same
//! deterministic progression, so owners agree without talking.

use super::progress::{Position, Progress};
use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;

use super::model_average;
use super::snapshot::{DriverState, LbfgsState, OwnerState, Saved, ShardedState, Stored};
use crate::dataflow::fold::{Emission, Owner, RoundTotals, ShardGrad};
use crate::dataflow::snapshot::{Cadence, Part, PartOf};
use crate::dataflow::{bound_message, Control, Failure, LazyHeader, ParamMsg, Phase, ShardValues};
use crate::error::Error;
use crate::exact::Wide;
use crate::model::Roles;
use crate::optim::lazy::{Clock, Drift, Lazy, Stamp};
use crate::optim::lbfgs::{Lbfgs, Next};
use crate::optim::vector_free::{self, Request, Scalars, ShardedLbfgs};
use crate::optim::{update, FirstOrderState, LiveSet, Penalty};
use crate::spec::{OptimizerSpec, Pipeline};

/// A shard this worker owns.
#[derive(Debug, Clone)]
pub struct OwnedShard {
    /// Shard id.
    pub id: u32,
    /// Its coordinates in the parameter vector.
    pub range: Range<usize>,
    /// Current values.
    pub params: Vec<f64>,
    /// Optimizer state.
    pub state: FirstOrderState,
    /// Best values so far (early stopping).
    pub best: Option<Vec<f64>>,
    /// The values of the last emission, which every worker holds.
    pub sent: Option<Vec<f64>>,
    /// Emissions so far.
    pub seq: u64,
    /// Coordinates that ever had a gradient (the others are quiescent).
    pub live: LiveSet,
    /// Gradient buffer, zero between steps.
    pub grad: Vec<f64>,
    /// What may have changed since the last emission.
    pub changed: Changed,
    /// Lazy updates (`None`: every step visits every live coordinate).
    pub lazy: Option<Lazy>,
    /// Offsets every step touches: intercepts and numeric weights.
    pub dense: Vec<usize>,
    /// Lazy updates: offsets touched since the last emission.
    pub pending: Vec<usize>,
}

/// Which coordinates of a shard may differ from its last emission (each
/// variant includes the ones before it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Changed {
    /// None.
    #[default]
    Nothing,
    /// Only the ones in `pending` (a lazy step).
    Touched,
    /// Only live coordinates (a sparse step, or a lazy flush).
    Live,
    /// Any.
    All,
}

impl OwnedShard {
    /// Marks that `c` may have changed.
    fn mark(&mut self, c: Changed) {
        self.changed = self.changed.max(c);
    }

    /// The values to send (the best ones, or the current ones), and with
    /// lazy updates the header readers need (`stamp`: the clock now).
    ///
    /// After lazy steps, what they touched: the weights (or FTRL's state,
    /// from which readers compute the weights), or the whole shard when
    /// every coordinate was touched. Otherwise (eager steps, a flush, the
    /// first or the best values) as [`ShardValues::diff`] against the last
    /// emission would give them, looking only at what may have changed.
    fn emit(&mut self, pick_best: bool, stamp: Stamp) -> (ShardValues, Option<LazyHeader>) {
        let changed = std::mem::take(&mut self.changed);
        let Some(lazy) = self.lazy.as_ref() else {
            return (self.emit_values(pick_best, changed), None);
        };
        let drifts = lazy.drift().moves();
        let ftrl = matches!(lazy.drift(), Drift::Ftrl { .. });
        let mut pending = std::mem::take(&mut self.pending);
        pending.sort_unstable();
        pending.dedup();
        let mut header = LazyHeader {
            stamp,
            flushed: false,
            state: Vec::new(),
        };
        if ftrl {
            header.state = pending
                .iter()
                .map(|&i| (i as u32, self.state.m[i], self.state.v[i]))
                .collect();
        }
        let values = match self.sent.as_mut() {
            Some(sent) if changed == Changed::Touched && !pick_best => {
                pending.iter().for_each(|&i| sent[i] = self.params[i]);
                if ftrl {
                    ShardValues::Delta(Vec::new())
                } else if pending.len() == self.params.len() {
                    header.flushed = true;
                    ShardValues::Dense(self.params.clone())
                } else {
                    ShardValues::Delta(
                        pending
                            .iter()
                            .map(|&i| (i as u32, self.params[i]))
                            .collect(),
                    )
                }
            }
            _ => {
                if let (true, Some(sent)) = (ftrl, self.sent.as_mut()) {
                    // Readers compute these from the state sent along.
                    pending.iter().for_each(|&i| sent[i] = self.params[i]);
                }
                header.flushed = changed >= Changed::Live || self.sent.is_none() || pick_best;
                self.emit_values(pick_best, changed)
            }
        };
        pending.clear();
        self.pending = pending;
        // Readers need the header only to compute weights that drift.
        (values, drifts.then_some(header))
    }

    fn emit_values(&mut self, pick_best: bool, changed: Changed) -> ShardValues {
        let (Some(sent), false, Changed::Nothing | Changed::Live) =
            (self.sent.as_mut(), pick_best, changed)
        else {
            let now = match (&self.best, pick_best) {
                (Some(b), true) => b.clone(),
                _ => self.params.clone(),
            };
            let values = ShardValues::diff(self.sent.as_deref(), &now);
            self.sent = Some(now);
            // After sending the best values, workers hold those.
            self.changed = if pick_best {
                Changed::All
            } else {
                Changed::Nothing
            };
            return values;
        };
        if changed == Changed::Nothing {
            return ShardValues::Delta(Vec::new());
        }
        let delta: Vec<(u32, f64)> = self
            .live
            .indices()
            .iter()
            .filter(|&&i| self.params[i].to_bits() != sent[i].to_bits())
            .map(|&i| (i as u32, self.params[i]))
            .collect();
        delta.iter().for_each(|&(i, v)| sent[i as usize] = v);
        ShardValues::sparse(delta, self.params.len())
            .unwrap_or_else(|| ShardValues::Dense(self.params.clone()))
    }
}

#[derive(Debug)]
enum Mode {
    FirstOrder {
        spec: OptimizerSpec,
        steps_per_epoch: u64,
    },
    /// Replicas are stepped by the workers; owners only average them.
    Average {
        steps_per_epoch: u64,
        sync_every: u64,
    },
    Lbfgs {
        opt: Box<Lbfgs>,
        converged: bool,
        evaluations: u64,
    },
    /// Vector-free L-BFGS (`optimizer.sharded`): each owner holds its
    /// shards' pieces of the vectors.
    Sharded {
        opt: Box<ShardedLbfgs>,
        converged: bool,
        evaluations: u64,
    },
}

/// What the owners do with a round's sums: the strategy's choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerStep {
    /// Step the optimizer with the mean gradient (or let L-BFGS choose).
    Optimizer,
    /// The sums are `rows · replica` of replicas trained for `sync_every`
    /// steps: the parameters become their rows-weighted mean.
    Average {
        /// Steps each replica takes per round.
        sync_every: u64,
    },
}

/// The strategy's policy for the shard owners.
#[derive(Debug, Clone, Copy)]
pub struct OwnerPolicy {
    /// How many training steps may be in flight beyond the one being
    /// folded (bounded staleness; 0 = synchronous).
    pub lag: u64,
    /// What a round's sums become.
    pub step: OwnerStep,
}

/// The owner-side logic of the training loop.
///
/// Rounds are folded in timely-time order; every emitted phase that expects
/// an answer (training gradients, or the collector's control after an
/// evaluation) joins `in_flight`, so the owner knows what each folded round
/// was. With `lag = s` (`param-server`), `s + 1` training steps are in
/// flight at once: folding step `j` releases step `j + s + 1`.
#[derive(Debug)]
pub struct Driver {
    shards: Vec<OwnedShard>,
    mode: Mode,
    roles: Roles,
    penalty: Penalty,
    fit_intercept: bool,
    epochs: u32,
    /// L-BFGS: evaluate every so many iterations (`train.eval_every`).
    eval_every: u32,
    /// The last epoch (L-BFGS iteration) evaluated.
    evaluated: u32,
    keep_best: bool,
    lag: u64,
    in_flight: VecDeque<Phase>,
    steps: u64,
    /// Lazy updates: the steps applied, shared by the owned shards.
    clock: Clock,
    /// This owner's worker index.
    worker: u32,
    /// When checkpoints fall (`None`: the job takes none).
    cadence: Option<Cadence>,
    /// The owned shards' state at the point just passed, if a checkpoint
    /// falls there.
    snapshot: Option<Part>,
    /// A resumed job: where it resumes.
    resumed: Option<Resumed>,
    /// Exact sum of the training losses since the last evaluation.
    epoch_loss: Wide,
    /// Training rows behind `epoch_loss`.
    epoch_rows: u64,
    /// Steps of the last round folded.
    last_round: u64,
    /// A worker asked the job to stop (a signal): at the next point where
    /// a checkpoint can be taken.
    stop_request: Option<Failure>,
    /// The request, once stopped there.
    stopped: Option<Failure>,
    /// A job may resume inside an epoch (workers cache their rows; a
    /// streamed unit is read from its start).
    resumes_inside_epochs: bool,
    /// Progress lines (worker 0's owner only).
    progress: Progress,
}

/// Where a resumed job continues.
#[derive(Debug, Clone, Copy)]
enum Resumed {
    /// At the boundary after `epoch` epochs, with its objective; the job
    /// ends there if `done`.
    Boundary {
        epoch: u32,
        objective: Option<f64>,
        done: bool,
    },
    /// Inside epoch `epoch` (0-based), at step `step`.
    Step { epoch: u32, step: u64 },
}

impl Driver {
    /// The driver for the shards in `owned` (ids into `ranges`), starting
    /// from `init` (the whole parameter vector; zero if `None`), under the
    /// strategy's `policy`.
    pub fn new(
        pipeline: &Pipeline,
        roles: &Roles,
        ranges: &[Range<usize>],
        owned: &[u32],
        steps_per_epoch: u64,
        init: Option<&[f64]>,
        policy: OwnerPolicy,
    ) -> Driver {
        let penalty = Penalty {
            l2: pipeline.model.l2,
            l1: pipeline.model.l1,
        };
        let average = matches!(policy.step, OwnerStep::Average { .. });
        let lazy = match pipeline.optimizer.first_order() {
            // As in `sharded::run`: not without hashed features.
            Some(f) if f.lazy && !average && roles.has_sparse() => {
                Some(Lazy::new(&pipeline.optimizer, penalty))
            }
            _ => None,
        };
        let dense: &[usize] = roles.dense_indices();
        let shards: Vec<OwnedShard> = owned
            .iter()
            .map(|&id| {
                let range = ranges[id as usize].clone();
                let lo = dense.partition_point(|&i| i < range.start);
                let hi = dense.partition_point(|&i| i < range.end);
                let params =
                    init.map_or_else(|| vec![0.0; range.len()], |t| t[range.clone()].to_vec());
                // Non-zero starting values are live from the start: the
                // penalty acts on them before any gradient does.
                let mut live = LiveSet::default();
                params
                    .iter()
                    .enumerate()
                    .filter(|(_, w)| **w != 0.0)
                    .for_each(|(j, _)| live.insert(j));
                OwnedShard {
                    lazy: lazy.clone(),
                    dense: dense[lo..hi].iter().map(|&i| i - range.start).collect(),
                    pending: Vec::new(),
                    id,
                    state: FirstOrderState::starting_at(&pipeline.optimizer, &params),
                    params,
                    range,
                    best: None,
                    sent: None,
                    seq: 0,
                    live,
                    grad: Vec::new(),
                    changed: Changed::All,
                }
            })
            .collect();
        let mode = match pipeline.optimizer {
            _ if let OwnerStep::Average { sync_every } = policy.step => Mode::Average {
                steps_per_epoch,
                sync_every,
            },
            OptimizerSpec::Lbfgs {
                memory,
                tolerance,
                gradient_tolerance,
                sharded: true,
            } => {
                let pieces = shards
                    .iter()
                    .map(|s| {
                        let penalised = s.range.clone().map(|i| !roles.is_intercept(i));
                        (s.params.clone(), penalised.collect())
                    })
                    .collect();
                Mode::Sharded {
                    opt: Box::new(ShardedLbfgs::new(
                        pieces,
                        memory,
                        tolerance,
                        gradient_tolerance,
                        penalty,
                    )),
                    converged: false,
                    evaluations: 0,
                }
            }
            OptimizerSpec::Lbfgs {
                memory,
                tolerance,
                gradient_tolerance,
                sharded: false,
            } => {
                let n = roles.len();
                let penalised = (0..n).map(|i| !roles.is_intercept(i)).collect();
                Mode::Lbfgs {
                    opt: Box::new(
                        Lbfgs::new(
                            init.map_or_else(|| vec![0.0; n], <[f64]>::to_vec),
                            memory,
                            tolerance,
                            penalty,
                            penalised,
                        )
                        .with_gradient_tolerance(gradient_tolerance),
                    ),
                    converged: false,
                    evaluations: 0,
                }
            }
            spec => Mode::FirstOrder {
                spec,
                steps_per_epoch,
            },
        };
        let lag = match mode {
            Mode::FirstOrder { .. } => policy.lag,
            _ => 0,
        };
        Driver {
            shards,
            mode,
            roles: roles.clone(),
            penalty,
            fit_intercept: pipeline.model.fit_intercept,
            epochs: pipeline.train.epochs,
            eval_every: pipeline.train.eval_every.max(1),
            evaluated: 0,
            keep_best: pipeline.train.early_stopping.is_some(),
            lag,
            in_flight: VecDeque::new(),
            steps: 0,
            clock: Clock::default(),
            worker: 0,
            cadence: None,
            snapshot: None,
            resumed: None,
            epoch_loss: Wide::default(),
            epoch_rows: 0,
            last_round: 1,
            stop_request: None,
            stopped: None,
            resumes_inside_epochs: pipeline.data.cache,
            progress: Progress::default(),
        }
    }

    /// Takes checkpoints at `cadence`, as worker `worker`'s owner.
    pub fn checkpointed(mut self, worker: usize, cadence: Option<Cadence>) -> Driver {
        self.worker = worker as u32;
        self.cadence = cadence;
        self
    }

    /// Continues from the boundary `saved` holds: the owned shards, the
    /// optimizer's state and step count take its values, and the first
    /// emission ([`Owner::start`]) is what the boundary released.
    pub fn resume(&mut self, saved: &Saved) -> Result<(), Error> {
        let d = &saved.driver;
        for s in &mut self.shards {
            let Some(at) = saved.shard(s.id) else {
                return Err(Error::Internal(format!(
                    "shard {} is missing from the checkpoint",
                    s.id
                )));
            };
            if at.params.len() != s.range.len() {
                return Err(Error::Internal(format!(
                    "shard {} holds {} parameters in the checkpoint, {} here",
                    s.id,
                    at.params.len(),
                    s.range.len()
                )));
            }
            s.params.clone_from(&at.params);
            s.state = at.state.clone();
            s.best.clone_from(&at.best);
            s.live = LiveSet::from_indices(&at.live);
            s.lazy = match (s.lazy.take(), &at.lazy) {
                (Some(lazy), Some(last)) => Some(lazy.resumed(last.clone())),
                (None, None) => None,
                _ => {
                    return Err(Error::Internal(
                        "the checkpoint and the job disagree on lazy updates".into(),
                    ))
                }
            };
            // The workers start from the checkpoint's values: what the
            // owners last sent them.
            s.sent = Some(s.params.clone());
            s.pending.clear();
            s.changed = Changed::Nothing;
        }
        self.steps = d.steps;
        self.epoch_loss = d.epoch_loss;
        self.epoch_rows = d.epoch_rows;
        self.clock = Clock::from_stamps(d.clock.clone())
            .ok_or_else(|| Error::Internal("the checkpoint's lazy clock is not whole".into()))?;
        match (&mut self.mode, &d.lbfgs) {
            (
                Mode::Lbfgs {
                    opt,
                    converged,
                    evaluations,
                },
                Some(at),
            ) => {
                **opt = at.opt.clone();
                *converged = at.converged;
                *evaluations = at.evaluations;
            }
            (Mode::Lbfgs { .. }, None) | (_, Some(_)) => {
                return Err(Error::Internal(
                    "the checkpoint and the job disagree on the optimizer".into(),
                ))
            }
            _ => {}
        }
        match (&mut self.mode, &saved.sharded_lbfgs) {
            (
                Mode::Sharded {
                    opt,
                    converged,
                    evaluations,
                },
                Some(at),
            ) => {
                let pieces = self
                    .shards
                    .iter()
                    .map(|s| at.pieces.get(s.id as usize).cloned())
                    .collect::<Option<Vec<_>>>();
                let fits = |p: &[vector_free::Piece]| {
                    p.iter()
                        .zip(&self.shards)
                        .all(|(p, s)| ShardedLbfgs::piece_len(p) == s.range.len())
                };
                let restored = pieces
                    .filter(|p| fits(p))
                    .and_then(|p| ShardedLbfgs::restore(at.common.clone(), p))
                    .ok_or_else(|| {
                        Error::Internal(
                            "the checkpoint's sharded L-BFGS state does not fit this job's shards"
                                .into(),
                        )
                    })?;
                **opt = restored;
                *converged = at.converged;
                *evaluations = at.evaluations;
            }
            (Mode::Sharded { .. }, None) | (_, Some(_)) => {
                return Err(Error::Internal(
                    "the checkpoint and the job disagree on the optimizer".into(),
                ))
            }
            _ => {}
        }
        self.evaluated = d.epoch;
        self.resumed = Some(match d.next {
            Some((epoch, step)) => Resumed::Step { epoch, step },
            None => Resumed::Boundary {
                epoch: d.epoch,
                objective: d.objective,
                done: d.done,
            },
        });
        Ok(())
    }

    /// Where the job is, in the numbering of its checkpoints: the
    /// optimizer's steps (L-BFGS: its iterations, `epoch`).
    fn position(&self, epoch: u32) -> u64 {
        match self.mode {
            Mode::Lbfgs { .. } | Mode::Sharded { .. } => u64::from(epoch),
            _ => self.steps,
        }
    }

    /// The owned shards' state after `epoch` epochs, at their boundary or
    /// (`next`: the round to run next) inside the next epoch.
    fn save(
        &self,
        epoch: u32,
        objective: Option<f64>,
        done: bool,
        next: Option<(u32, u64)>,
    ) -> Part {
        let shards = self
            .shards
            .iter()
            .map(|s| {
                // Where the owners step, every coordinate outside the live
                // set and the dense offsets is quiescent (the invariant
                // sparse steps rely on): a wide model's checkpoint costs
                // its live set. Averages and L-BFGS set whole vectors.
                let stepped = matches!(self.mode, Mode::FirstOrder { .. });
                let mut candidates = s.live.indices().to_vec();
                candidates.extend_from_slice(&s.dense);
                candidates.sort_unstable();
                candidates.dedup();
                Stored::of(
                    s.id,
                    &s.params,
                    &s.state,
                    s.best.as_deref(),
                    s.live.indices(),
                    s.lazy.as_ref().map(|l| l.current_at()),
                    stepped.then_some(&candidates[..]),
                )
            })
            .collect();
        let lbfgs = match &self.mode {
            Mode::Lbfgs {
                opt,
                converged,
                evaluations,
            } => Some(LbfgsState {
                opt: (**opt).clone(),
                converged: *converged,
                evaluations: *evaluations,
            }),
            _ => None,
        };
        let sharded = match &self.mode {
            Mode::Sharded {
                opt,
                converged,
                evaluations,
            } => {
                let (common, pieces) = opt.save();
                Some(ShardedState {
                    common,
                    converged: *converged,
                    evaluations: *evaluations,
                    pieces: self.shards.iter().map(|s| s.id).zip(pieces).collect(),
                })
            }
            _ => None,
        };
        let state = OwnerState {
            shards,
            sharded,
            driver: DriverState {
                epoch,
                objective,
                done,
                steps: self.steps,
                clock: self.clock.stamps(),
                lbfgs,
                next,
                epoch_loss: self.epoch_loss,
                epoch_rows: self.epoch_rows,
            },
        };
        Part {
            position: self.position(epoch),
            epoch,
            worker: self.worker,
            of: PartOf::Owner,
            // An encoding failure leaves the part empty: the writer then
            // fails the job, naming this worker.
            bytes: bincode::serialize(&state).unwrap_or_default(),
        }
    }

    /// After the boundary that ends `epoch` epochs: the final parameters if
    /// the job is `done`, else the first rounds of the next epoch (or the
    /// next L-BFGS trial point).
    fn after_boundary(&mut self, epoch: u32, objective: Option<f64>, done: bool) -> Emission {
        if done {
            let converged_by = match &self.mode {
                Mode::Lbfgs { opt, .. } => opt.converged_by(),
                Mode::Sharded { opt, .. } => opt.converged_by(),
                _ => None,
            };
            let phase = Phase::Final {
                epochs: epoch,
                objective,
                converged_by,
            };
            return self.send(phase, 0, self.keep_best);
        }
        match &mut self.mode {
            Mode::FirstOrder { .. } | Mode::Average { .. } => self.start_epoch(epoch),
            Mode::Lbfgs { opt, .. } => {
                let p = opt.propose();
                self.set_all(&p);
                self.send(Phase::Train { epoch: 0, step: 0 }, 0, false)
            }
            Mode::Sharded { opt, .. } => {
                let request = opt.propose();
                self.sharded_next(request)
            }
        }
    }

    /// Lazy updates: brings every live coordinate of the owned shards up to
    /// the latest step (so that evaluation, the best values and the final
    /// model are the weights themselves), and forgets older clock stamps.
    fn flush(&mut self) {
        let Mode::FirstOrder { spec, .. } = &self.mode else {
            return;
        };
        let roles = &self.roles;
        for s in &mut self.shards {
            let start = s.range.start;
            if let Some(lazy) = s.lazy.as_mut() {
                lazy.flush(
                    spec,
                    &mut s.params,
                    &mut s.state,
                    &self.clock,
                    s.live.indices(),
                    |i| !roles.is_intercept(start + i),
                );
                s.mark(Changed::Live);
            }
        }
        let now = self.clock.now().t;
        self.clock.forget_before(now);
    }

    /// Sends the owned shards with `phase`, `delay` rounds from now.
    fn send(&mut self, phase: Phase, delay: u64, pick_best: bool) -> Emission {
        if matches!(
            phase,
            Phase::Train { .. } | Phase::Eval { .. } | Phase::Reduce
        ) {
            self.in_flight.push_back(phase);
        }
        // Sharded L-BFGS: each shard's partial sums for the round.
        let scalars: Vec<Scalars> = match &self.mode {
            Mode::Sharded { opt, .. } if matches!(phase, Phase::Train { .. } | Phase::Reduce) => {
                (0..self.shards.len()).map(|k| opt.partials(k)).collect()
            }
            _ => Vec::new(),
        };
        if matches!(phase, Phase::Eval { .. } | Phase::Final { .. }) {
            self.flush();
        }
        let version = self.steps;
        let stamp = self.clock.now();
        self.shards
            .iter_mut()
            .enumerate()
            .map(|(k, s)| {
                s.seq += 1;
                let (values, lazy) = s.emit(pick_best, stamp);
                let msg = ParamMsg {
                    shard: s.id,
                    phase,
                    version,
                    seq: s.seq,
                    values,
                    lazy,
                    scalars: scalars.get(k).cloned().unwrap_or_default(),
                };
                (delay, msg)
            })
            .collect()
    }

    /// Releases the first `lag + 1` steps of `epoch`, one round apart.
    fn start_epoch(&mut self, epoch: u32) -> Emission {
        let steps_per_epoch = match self.mode {
            Mode::FirstOrder {
                steps_per_epoch, ..
            }
            | Mode::Average {
                steps_per_epoch, ..
            } => steps_per_epoch,
            Mode::Lbfgs { .. } | Mode::Sharded { .. } => 1,
        };
        let mut out = Vec::new();
        for step in 0..(self.lag + 1).min(steps_per_epoch.max(1)) {
            out.extend(self.send(Phase::Train { epoch, step }, step, false));
        }
        out
    }

    fn set_all(&mut self, x: &[f64]) {
        for s in &mut self.shards {
            s.params.copy_from_slice(&x[s.range.clone()]);
            s.changed = Changed::All;
        }
    }

    /// After folding step `step` of `epoch` (which moved the optimizer `k`
    /// steps): the step `lag + 1` ahead, the epoch's evaluation once its
    /// last step is folded, or fresher parameters for workers running ahead.
    fn advance(&mut self, epoch: u32, step: u64, k: u64, steps_per_epoch: u64) -> Emission {
        self.steps += k;
        let next = step + k + self.lag;
        let phase = if next < steps_per_epoch {
            Phase::Train { epoch, step: next }
        } else if step + k >= steps_per_epoch {
            Phase::Eval {
                epoch: epoch + 1,
                steps: self.steps,
                objective: None,
            }
        } else {
            Phase::Refresh
        };
        self.send(phase, 0, false)
    }

    /// [`Driver::advance`] after a training round of `k` steps that
    /// summed `loss` over `rows` rows, taking a checkpoint if one falls
    /// inside the epoch here.
    fn advance_saving(
        &mut self,
        epoch: u32,
        step: u64,
        k: u64,
        steps_per_epoch: u64,
        loss: Wide,
        rows: u64,
    ) -> Emission {
        self.epoch_loss += loss;
        self.epoch_rows += rows;
        self.last_round = k;
        let out = self.advance(epoch, step, k, steps_per_epoch);
        let next = step + k;
        if self.worker == 0 {
            let at = Position {
                epoch: epoch + 1,
                epochs: self.epochs,
                step: next,
                steps_per_epoch,
                rows: self.epoch_rows,
                loss: self.epoch_loss.to_f64(),
            };
            self.progress.round(at, k);
            if next >= steps_per_epoch {
                self.progress.epoch_started();
            }
        }
        // Inside an epoch, a stop needs a synchronous first-order step:
        // nothing in flight, no replica mid-round.
        let stop_here = self.stop_request.is_some()
            && self.lag == 0
            && self.resumes_inside_epochs
            && matches!(self.mode, Mode::FirstOrder { .. });
        if next < steps_per_epoch
            && (stop_here || self.cadence.is_some_and(|c| c.due_at_step(self.steps, k)))
        {
            self.snapshot = Some(self.save(epoch, None, false, Some((epoch, next))));
            if stop_here {
                self.stopped = self.stop_request.take();
                return Vec::new();
            }
        }
        if next >= steps_per_epoch {
            // The evaluation's record holds them from here.
            self.epoch_loss = Wide::default();
            self.epoch_rows = 0;
        }
        out
    }

    /// Every coordinate of shard `s`'s mean gradient, from the round's
    /// sums over `rows` rows (zero where there is no sum).
    fn mean_grad(&self, s: &OwnedShard, sums: &BTreeMap<u32, ShardGrad>, rows: u64) -> Vec<f64> {
        let (roles, fit_intercept, start) = (&self.roles, self.fit_intercept, s.range.start);
        let mean = |i: usize, g: f64| Self::mean_at(roles, fit_intercept, rows, start + i, g);
        match sums.get(&s.id) {
            // A coordinate no row touched has the mean of a +0 sum: +0.
            None => vec![0.0; s.range.len()],
            Some(ShardGrad::Sparse(entries)) => {
                let mut grad = vec![0.0; s.range.len()];
                for &(i, g) in entries {
                    if let Some(x) = grad.get_mut(i as usize) {
                        *x = mean(i as usize, g);
                    }
                }
                grad
            }
            Some(ShardGrad::Dense(sums)) => {
                let mut grad = sums.clone();
                for (i, g) in grad.iter_mut().enumerate() {
                    *g = mean(i, *g);
                }
                grad
            }
        }
    }

    /// The mean gradient of parameter `i` (absolute index) from its sum
    /// over `rows` rows.
    fn mean_at(roles: &Roles, fit_intercept: bool, rows: u64, i: usize, g: f64) -> f64 {
        update::mean(g, rows, !fit_intercept && roles.is_intercept(i))
    }

    /// `model-average`: the owned shards become the replicas' average
    /// ([`model_average::average`]).
    fn average_replicas(&mut self, sums: &BTreeMap<u32, ShardGrad>, rows: u64) {
        for s in &mut self.shards {
            if let Some(sum) = sums.get(&s.id) {
                s.params = model_average::average(sum, s.range.len(), rows);
                s.changed = Changed::All;
            }
        }
    }

    /// One first-order step of every owned shard from the summed gradients
    /// of `rows` rows (step `step` of `epoch`): eager over every coordinate
    /// (dense sums) or the live ones (sparse sums), or lazy over those the
    /// step touched.
    fn step_shards(
        &mut self,
        spec: &OptimizerSpec,
        sums: &BTreeMap<u32, ShardGrad>,
        rows: u64,
        epoch: u32,
        step: u64,
    ) -> Result<(), Failure> {
        let step_args = update::Step {
            spec,
            lr: update::rate(spec, self.steps, epoch),
            penalty: self.penalty,
        };
        if self.shards.iter().any(|s| s.lazy.is_some()) {
            self.clock.tick(step_args.lr, self.penalty);
        }
        let (roles, fit_intercept) = (&self.roles, self.fit_intercept);
        let mean_at = |i: usize, g: f64| Self::mean_at(roles, fit_intercept, rows, i, g);
        for s in &mut self.shards {
            let Some(sum) = sums.get(&s.id) else { continue };
            let start = s.range.start;
            let n = s.range.len();
            if s.grad.len() != n {
                s.grad = vec![0.0; n];
            }
            let mut touched = std::mem::take(&mut s.pending);
            debug_assert!(touched.is_empty(), "every fold emits");
            // An eager dense step visits every coordinate and needs no
            // list of them.
            let listed = s.lazy.is_some();
            match sum {
                ShardGrad::Dense(v) => v.iter().enumerate().for_each(|(i, &g)| {
                    s.grad[i] = mean_at(start + i, g);
                    if listed {
                        touched.push(i);
                    }
                }),
                ShardGrad::Sparse(e) => e.iter().for_each(|&(i, g)| {
                    s.grad[i as usize] = mean_at(start + i as usize, g);
                    touched.push(i as usize);
                }),
            }
            let dense = |i: usize| roles.is_dense(start + i);
            let (visit, changed) = match (s.lazy.as_mut(), sum) {
                (Some(lazy), _) => {
                    // Candidates: every row's coordinates and those with a
                    // sum; the others wait.
                    touched.extend_from_slice(&s.dense);
                    touched.sort_unstable();
                    touched.dedup();
                    let visit = update::Visit::Lazy {
                        lazy,
                        clock: &self.clock,
                        touched: &mut touched,
                        dense: &dense,
                    };
                    (visit, Changed::Touched)
                }
                (None, ShardGrad::Dense(_)) => (update::Visit::All, Changed::All),
                (None, ShardGrad::Sparse(_)) => (update::Visit::Live(&touched), Changed::Live),
            };
            let bad = update::apply(
                step_args,
                &mut s.params,
                &mut s.grad,
                &mut s.state,
                &mut s.live,
                visit,
                |i| !roles.is_intercept(start + i),
            );
            if changed != Changed::Touched {
                touched.clear();
            }
            s.pending = touched;
            s.mark(changed);
            if let Some(i) = bad {
                return Err(Failure::from(&update::diverged(
                    epoch,
                    step,
                    start + i,
                    s.params[i],
                )));
            }
        }
        Ok(())
    }

    /// L-BFGS: observes the full-batch loss and gradient at the point the
    /// workers evaluated, and emits the next point to evaluate, the
    /// accepted iterate (an evaluation round), or the final one.
    fn lbfgs_round(&mut self, sums: &BTreeMap<u32, ShardGrad>, loss: f64, rows: u64) -> Emission {
        let Some(full) = self.shards.first() else {
            return Vec::new();
        };
        let grad = self.mean_grad(full, sums, rows);
        let Mode::Lbfgs {
            opt,
            converged,
            evaluations,
        } = &mut self.mode
        else {
            return Vec::new();
        };
        *evaluations += 1;
        let loss = loss / rows.max(1) as f64;
        let (phase, x) = match opt.observe(loss, &grad) {
            // Full batch: every evaluation is step 0 of epoch 0.
            Next::Evaluate(p) => (Phase::Train { epoch: 0, step: 0 }, p),
            Next::Accepted {
                objective,
                converged: c,
            } => {
                *converged = c;
                let epoch = opt.iterations();
                // An iteration is evaluated (a metrics record, early
                // stopping, a boundary where checkpoints and stops fall)
                // every `eval_every` and at the last; between them the
                // next search direction follows at once. Signals and
                // checkpoints wait for the next evaluated iteration, so
                // that neither changes what is evaluated (nor, with early
                // stopping, the model).
                let evaluated = c || epoch >= self.epochs || epoch.is_multiple_of(self.eval_every);
                if evaluated {
                    let phase = Phase::Eval {
                        epoch,
                        steps: *evaluations,
                        objective: Some(objective),
                    };
                    (phase, opt.iterate().to_vec())
                } else {
                    (Phase::Train { epoch: 0, step: 0 }, opt.propose())
                }
            }
            // The last iterate is final: evaluated first if it was not
            // (it ends the run there, as a converged one does).
            Next::Stalled if opt.iterations() > self.evaluated => {
                *converged = true;
                let phase = Phase::Eval {
                    epoch: opt.iterations(),
                    steps: *evaluations,
                    objective: Some(opt.objective_value()),
                };
                (phase, opt.iterate().to_vec())
            }
            Next::Stalled => {
                let phase = Phase::Final {
                    epochs: opt.iterations(),
                    objective: Some(opt.objective_value()),
                    converged_by: opt.converged_by(),
                };
                (phase, opt.iterate().to_vec())
            }
        };
        self.set_all(&x);
        // A final phase sends the best values when early stopping keeps them.
        let best = matches!(phase, Phase::Final { .. }) && self.keep_best;
        self.send(phase, 0, best)
    }
}

impl Driver {
    /// Sharded L-BFGS: observes the full-batch loss and the owned shards'
    /// gradients at the trial point, with the totals of the trial's
    /// scalars, and emits what comes next.
    fn sharded_round(
        &mut self,
        sums: &BTreeMap<u32, ShardGrad>,
        loss: f64,
        rows: u64,
        reduced: &Scalars,
    ) -> Result<Emission, Failure> {
        let grads: Vec<Vec<f64>> = self
            .shards
            .iter()
            .map(|s| self.mean_grad(s, sums, rows))
            .collect();
        let Mode::Sharded {
            opt, evaluations, ..
        } = &mut self.mode
        else {
            return Ok(Vec::new());
        };
        *evaluations += 1;
        let request = opt
            .on_trial(loss / rows.max(1) as f64, &grads, reduced)
            .map_err(sharded_bug)?;
        Ok(self.sharded_next(request))
    }

    /// Sharded L-BFGS: the totals of a [`Phase::Reduce`] round.
    fn sharded_reduce(&mut self, reduced: &Scalars) -> Result<Emission, Failure> {
        let Mode::Sharded { opt, .. } = &mut self.mode else {
            return Ok(Vec::new());
        };
        let request = opt.on_gram(reduced).map_err(sharded_bug)?;
        Ok(self.sharded_next(request))
    }

    /// Sharded L-BFGS: the round `request` asks for (as
    /// [`Driver::lbfgs_round`] for the whole-vector one).
    fn sharded_next(&mut self, request: Request) -> Emission {
        let Mode::Sharded {
            opt,
            converged,
            evaluations,
        } = &mut self.mode
        else {
            return Vec::new();
        };
        let train = Phase::Train { epoch: 0, step: 0 };
        let (phase, trial) = match request {
            Request::Evaluate => (train, true),
            Request::Reduce => (Phase::Reduce, false),
            Request::Accepted {
                objective,
                converged: c,
            } => {
                *converged = c;
                let epoch = opt.iterations();
                // As in `lbfgs_round`: evaluated every `eval_every`.
                if c || epoch >= self.epochs || epoch.is_multiple_of(self.eval_every) {
                    let phase = Phase::Eval {
                        epoch,
                        steps: *evaluations,
                        objective: Some(objective),
                    };
                    (phase, false)
                } else {
                    let request = opt.propose();
                    debug_assert_eq!(request, Request::Evaluate);
                    (train, true)
                }
            }
            Request::Stalled if opt.iterations() > self.evaluated => {
                *converged = true;
                let phase = Phase::Eval {
                    epoch: opt.iterations(),
                    steps: *evaluations,
                    objective: Some(opt.objective_value()),
                };
                (phase, false)
            }
            Request::Stalled => {
                let phase = Phase::Final {
                    epochs: opt.iterations(),
                    objective: Some(opt.objective_value()),
                    converged_by: opt.converged_by(),
                };
                (phase, false)
            }
        };
        if phase != Phase::Reduce {
            for (k, s) in self.shards.iter_mut().enumerate() {
                let v = if trial { opt.trial(k) } else { opt.iterate(k) };
                if s.params.len() == v.len() {
                    s.params.copy_from_slice(v);
                    s.changed = Changed::All;
                }
            }
        }
        let best = matches!(phase, Phase::Final { .. }) && self.keep_best;
        self.send(phase, 0, best)
    }
}

/// Sharded L-BFGS got what its owners did not ask for: a bug, reported as
/// one rather than run on.
fn sharded_bug(message: String) -> Failure {
    Failure::from(&Error::Internal(format!("sharded L-BFGS: {message}")))
}

impl Owner for Driver {
    /// The parameters of the first rounds.
    fn start(&mut self) -> Emission {
        match self.resumed.take() {
            Some(Resumed::Boundary {
                epoch,
                objective,
                done,
            }) => return self.after_boundary(epoch, objective, done),
            Some(Resumed::Step { epoch, step }) => {
                return self.send(Phase::Train { epoch, step }, 0, false)
            }
            None => {}
        }
        if let Mode::Lbfgs { opt, .. } = &self.mode {
            let x0 = opt.first_point().to_vec();
            for s in &mut self.shards {
                s.params = x0[s.range.clone()].to_vec();
            }
        }
        self.start_epoch(0)
    }

    /// Applies a training round's summed gradient (per owned shard), given
    /// the [`crate::exact::Bound`] of the partials summed: where it does not hold, the
    /// sums may have wrapped and the round fails, on any worker count.
    fn on_gradients(
        &mut self,
        sums: &BTreeMap<u32, ShardGrad>,
        totals: RoundTotals,
        reduced: &Scalars,
    ) -> Result<Emission, Failure> {
        let RoundTotals {
            loss: exact_loss,
            rows,
            bound,
        } = totals;
        let loss = exact_loss.to_f64();
        let (epoch, step) = match self.in_flight.pop_front() {
            Some(Phase::Train { epoch, step }) => (epoch, step),
            Some(Phase::Reduce) => return self.sharded_reduce(reduced),
            _ => return Ok(Vec::new()),
        };
        let diverged = |message: String| {
            Failure::from(&Error::Diverged {
                epoch,
                step,
                message,
            })
        };
        if !bound.holds() {
            return Err(diverged(bound_message(bound)));
        }
        if loss.is_nan() {
            return Err(diverged(
                format!(
                    "the exact sum of the round's losses left the range of 256-bit fixed point (≥ {:e}): rescale the label",
                    crate::exact::WIDE_SUM_LIMIT
                ),
            ));
        }
        match &self.mode {
            &Mode::Average {
                steps_per_epoch,
                sync_every,
            } => {
                if rows > 0 {
                    self.average_replicas(sums, rows);
                }
                let k = sync_every.min(steps_per_epoch - step);
                Ok(self.advance_saving(epoch, step, k, steps_per_epoch, exact_loss, rows))
            }
            &Mode::FirstOrder {
                spec,
                steps_per_epoch,
            } => {
                if rows > 0 {
                    self.step_shards(&spec, sums, rows, epoch, step)?;
                }
                Ok(self.advance_saving(epoch, step, 1, steps_per_epoch, exact_loss, rows))
            }
            Mode::Lbfgs { .. } => Ok(self.lbfgs_round(sums, loss, rows)),
            Mode::Sharded { .. } => self.sharded_round(sums, loss, rows, reduced),
        }
    }
    /// Applies the collector's decision after an evaluation round.
    fn on_control(&mut self, control: &Control) -> Emission {
        let Some(Phase::Eval {
            epoch, objective, ..
        }) = self.in_flight.pop_front()
        else {
            return Vec::new();
        };
        let previous = std::mem::replace(&mut self.evaluated, epoch);
        if control.best {
            for s in &mut self.shards {
                s.best = Some(s.params.clone());
            }
        }
        let done = control.stop
            || epoch >= self.epochs
            || matches!(
                self.mode,
                Mode::Lbfgs {
                    converged: true,
                    ..
                } | Mode::Sharded {
                    converged: true,
                    ..
                }
            );
        let stop_here = self.stop_request.is_some() && !done;
        // A checkpoint due at an epoch not evaluated (L-BFGS with
        // `eval_every`) falls at the next evaluated one.
        let since = previous.min(epoch.saturating_sub(1)) + 1;
        if stop_here
            || self.cadence.is_some_and(|c| {
                (since..=epoch).any(|e| c.due_at_epoch(e, self.steps, self.last_round))
            })
        {
            self.snapshot = Some(self.save(epoch, objective, done, None));
        }
        if stop_here {
            self.stopped = self.stop_request.take();
            return Vec::new();
        }
        self.after_boundary(epoch, objective, done)
    }

    fn take_snapshot(&mut self) -> Option<Part> {
        self.snapshot.take()
    }

    /// Stops at the next step (synchronous first-order steps) or the next
    /// epoch boundary, with a checkpoint there; without checkpoints, at
    /// once.
    fn stop(&mut self, why: Failure) -> Option<Failure> {
        if self.cadence.is_none() {
            return Some(why);
        }
        self.stop_request.get_or_insert(why);
        None
    }

    fn take_stopped(&mut self) -> Option<Failure> {
        self.stopped.take()
    }
}
