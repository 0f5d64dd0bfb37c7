//! `model-average` (local SGD): every replica of the model steps through
//! `sync_every` steps of its own rows, then the shard owners replace the
//! parameters by the rows-weighted mean of the replicas
//! (`Σ rows_r · replica_r / Σ rows_r`, summed exactly). Each replica keeps
//! its optimizer state; only the weights are averaged.
//!
//! There is one replica per worker, or `train.replicas` of them: then the
//! units are assigned to replicas, replica `r` of `R` trains on worker
//! `r·W/R` (see [`crate::data::partition::assign_replicas`]), and as a
//! replica's rows, state and arithmetic never depend on `W`, nor does the
//! model, and a checkpoint resumes on any worker count.
//!
//! The policy lives here: the worker side is [`LocalSteps`] (a
//! [`Replica`] for the gradient operator), the owner side [`average`],
//! which the shared sharded loop's owners apply under
//! [`OwnerStep::Average`].

use std::ops::Range;

use serde::{Deserialize, Serialize};

use timely::worker::Worker;

use super::driver::OwnerStep;
use super::sharded::{self, Sharding};
use super::{LoopInput, LoopOutcome, Strategy};
use crate::data::partition::replica_worker;
use crate::dataflow::fold::ShardGrad;
use crate::dataflow::gradient::{Replica, Workspace};
use crate::dataflow::{bound_message, loss_message, Failure, ShardValues};
use crate::error::Error;
use crate::exact::{Bound, Exact, Wide};
use crate::optim::lazy::{Clock, Lazy, Stamp};
use crate::optim::{update, FirstOrderState, LiveSet, Penalty};
use crate::spec::{OptimizerSpec, TrainSpec};

/// The `model-average` strategy.
#[derive(Debug, Clone, Copy, Default)]
pub struct ModelAverage;

impl Strategy for ModelAverage {
    fn name(&self) -> &'static str {
        "model-average"
    }

    /// With one replica per worker, which rows a replica trains on depends
    /// on the worker count; a fixed `train.replicas` does not.
    fn resumes_on_any_worker_count(&self, train: &TrainSpec) -> bool {
        train.replicas.is_some()
    }

    fn one_worker_count_reason(&self) -> &'static str {
        "there is one replica per worker, each with its own rows and optimizer state; set train.replicas to make the replicas independent of the worker count"
    }

    fn train(&self, worker: &mut Worker, input: LoopInput<'_>) -> Result<LoopOutcome, Failure> {
        let p = &input.plan.pipeline;
        let steps_per_epoch = input.steps.steps();
        let sync_every = p.train.sync_every.unwrap_or(steps_per_epoch).max(1);
        let penalty = Penalty {
            l2: p.model.l2,
            l1: p.model.l1,
        };
        // As for the owners' steps: lazy updates only with hashed features.
        let lazy = p.optimizer.first_order().is_some_and(|f| f.lazy) && input.roles().has_sparse();
        let start = FirstOrderState::starting_at(&p.optimizer, input.init.unwrap_or(&[]));
        let ids = replicas_of_worker(worker.index(), worker.peers(), p.train.replicas);
        if let (0, Some(r)) = (worker.index(), p.train.replicas) {
            let w = worker.peers();
            if r < w {
                tracing::warn!(
                    replicas = r,
                    workers = w,
                    "train.replicas is below the worker count: {} workers train no replica (they still own parameter shards)",
                    w - r
                );
            } else if r % w != 0 {
                tracing::info!(
                    replicas = r,
                    workers = w,
                    "the replicas do not divide evenly over the workers: the workers with {} replicas set the pace",
                    r.div_ceil(w)
                );
            }
        }
        let mut replica = LocalSteps {
            spec: p.optimizer,
            penalty,
            fit_intercept: p.model.fit_intercept,
            sync_every,
            steps_per_epoch,
            replicas: ids
                .into_iter()
                .map(|id| {
                    Own::new(
                        id,
                        start.clone(),
                        lazy.then(|| Lazy::new(&p.optimizer, penalty)),
                    )
                })
                .collect(),
            grad: Vec::new(),
            total: Vec::new(),
            mirror: Vec::new(),
        };
        if let Some(saved) = &input.resume {
            replica
                .load(&saved.replicas)
                .map_err(|e| Failure::from(&e))?;
            // The replicas start from the checkpoint's weights: as if the
            // owners had sent them whole (a checkpoint inside an epoch is
            // taken before the replicas received the round's average).
            let theta = saved.params();
            replica.received(&theta, 0..theta.len(), &ShardValues::Dense(theta.clone()));
        }
        sharded::run(
            worker,
            input,
            Sharding {
                lag: 0,
                record_staleness: false,
                replica: Some(Box::new(replica)),
                owner: OwnerStep::Average { sync_every },
            },
        )
    }
}

/// The owners' side: a shard of `len` parameters from the exact sum over
/// the replicas of `rows_r · replica_r`, where the replicas trained `rows`
/// rows in all: `Σ rows_r · replica_r / Σ rows_r`.
pub fn average(sum: &ShardGrad, len: usize, rows: u64) -> Vec<f64> {
    sum.to_dense(len).iter().map(|v| v / rows as f64).collect()
}

/// A replica's own state at an epoch boundary (the weights are the
/// owners').
#[derive(Serialize, Deserialize)]
struct ReplicaState {
    state: FirstOrderState,
    lazy: Option<Vec<u64>>,
    clock: Vec<Stamp>,
    live: Vec<usize>,
}

/// Marks a worker's saved replicas (tidemill 0.x wrote one bare
/// [`ReplicaState`] per worker, that of replica `worker`).
const SAVED_TAG: u64 = 0x5449_4445_5245_504c;

/// What a worker saves: the states of the replicas it trains, by id.
#[derive(Serialize, Deserialize)]
struct SavedReplicas {
    tag: u64,
    replicas: Vec<(u64, ReplicaState)>,
}

/// One replica a worker trains: everything of it but the weights, which
/// live in the model between its steps (see [`LocalSteps`]).
struct Own {
    /// The replica's number (of `train.replicas`, or the worker's index).
    id: usize,
    /// Its optimizer state (kept across rounds, never averaged).
    state: FirstOrderState,
    /// Lazy updates of the replica (`None`: every step visits every live
    /// coordinate).
    lazy: Option<Lazy>,
    /// The replica's clock (lazy updates).
    clock: Clock,
    /// Coordinates that may be non-quiescent (had a local gradient, or
    /// arrived non-zero from the owners).
    live: LiveSet,
}

impl Own {
    /// Replica `id`, from the optimizer state `state`, nothing live yet.
    fn new(id: usize, state: FirstOrderState, lazy: Option<Lazy>) -> Own {
        Own {
            id,
            state,
            lazy,
            clock: Clock::default(),
            live: LiveSet::default(),
        }
    }

    fn saved(&self) -> ReplicaState {
        ReplicaState {
            state: self.state.clone(),
            lazy: self.lazy.as_ref().map(|l| l.current_at().to_vec()),
            clock: self.clock.stamps(),
            live: self.live.indices().to_vec(),
        }
    }

    fn load(&mut self, saved: ReplicaState) -> Result<(), Error> {
        let bad =
            |what: &str| Error::Internal(format!("the saved state of replica {} {what}", self.id));
        self.state = saved.state;
        self.live = LiveSet::from_indices(&saved.live);
        self.clock = Clock::from_stamps(saved.clock).ok_or_else(|| bad("has a broken clock"))?;
        self.lazy = match (self.lazy.take(), saved.lazy) {
            (Some(lazy), Some(last)) => Some(lazy.resumed(last)),
            (None, None) => None,
            _ => return Err(bad("disagrees with the job on lazy updates")),
        };
        Ok(())
    }
}

/// The replicas' side of `model-average`: the worker steps each of its
/// replicas for `sync_every` steps over that replica's rows, then sends
/// `Σ rows_r · replica_r` over its replicas to the owners.
///
/// The model's parameters hold what the owners last sent (the `mirror`)
/// between rounds; a replica's round starts from them, steps them, adds
/// its share to `total`, and puts back the coordinates it moved (its live
/// set) before the next replica's round.
pub struct LocalSteps {
    /// The optimizer (first-order).
    spec: OptimizerSpec,
    /// Penalties.
    penalty: Penalty,
    /// Fit intercepts.
    fit_intercept: bool,
    /// Local steps per round.
    sync_every: u64,
    /// Steps per epoch.
    steps_per_epoch: u64,
    /// The replicas this worker trains, by id.
    replicas: Vec<Own>,
    /// Gradient buffer, zero between steps.
    grad: Vec<f64>,
    /// `Σ rows_r · replica_r` of the round so far, zero between rounds
    /// (empty with one replica on the worker).
    total: Vec<Exact>,
    /// The parameters as the owners last sent them.
    mirror: Vec<f64>,
}

impl LocalSteps {
    /// Continues from the states [`Replica::save`] gave on each worker of
    /// the run that wrote the checkpoint, whatever its worker count.
    fn load(&mut self, saved: &[Vec<u8>]) -> Result<(), Error> {
        let mut found: std::collections::BTreeMap<u64, ReplicaState> = Default::default();
        for (worker, bytes) in saved.iter().enumerate() {
            match bincode::deserialize::<SavedReplicas>(bytes) {
                Ok(s) if s.tag == SAVED_TAG => found.extend(s.replicas),
                // Written before replicas had numbers: worker w's replica w.
                _ => {
                    let state = bincode::deserialize::<ReplicaState>(bytes).map_err(|_| {
                        Error::Internal(format!(
                            "the checkpoint's replica states of worker {worker} do not read"
                        ))
                    })?;
                    found.insert(worker as u64, state);
                }
            }
        }
        for own in &mut self.replicas {
            let state = found.remove(&(own.id as u64)).ok_or_else(|| {
                Error::Internal(format!(
                    "the checkpoint holds no state of replica {}",
                    own.id
                ))
            })?;
            own.load(state)?;
        }
        Ok(())
    }
}

/// The replicas worker `index` of `workers` trains when `replicas` train
/// (`None`: one per worker, its own index).
pub fn replicas_of_worker(index: usize, workers: usize, replicas: Option<usize>) -> Vec<usize> {
    let r = replicas.unwrap_or(workers).max(1);
    (0..r)
        .filter(|&x| replica_worker(x, r, workers) == index)
        .collect()
}

/// What one replica's round ends with: its loss, rows, and the [`Bound`]
/// of what it added to the total.
struct RoundOut {
    loss: Wide,
    rows: u64,
    bound: Bound,
}

impl Replica for LocalSteps {
    fn round_steps(&self, step: u64) -> u64 {
        self.sync_every
            .min(self.steps_per_epoch.saturating_sub(step))
    }

    fn save(&self) -> Vec<u8> {
        let saved = SavedReplicas {
            tag: SAVED_TAG,
            replicas: self
                .replicas
                .iter()
                .map(|own| (own.id as u64, own.saved()))
                .collect(),
        };
        // An empty state does not read back: a resume then fails loudly.
        bincode::serialize(&saved).unwrap_or_default()
    }

    fn received(&mut self, theta: &[f64], range: Range<usize>, values: &ShardValues) {
        if self.mirror.len() != theta.len() {
            self.mirror = theta.to_vec();
        }
        match values {
            ShardValues::Dense(v) => {
                self.mirror[range.clone()].copy_from_slice(v);
                for (i, x) in v.iter().enumerate() {
                    if x.to_bits() != 0 {
                        self.replicas
                            .iter_mut()
                            .for_each(|own| own.live.insert(range.start + i));
                    }
                }
            }
            ShardValues::Delta(e) => {
                for &(i, v) in e {
                    self.mirror[range.start + i as usize] = v;
                    self.replicas
                        .iter_mut()
                        .for_each(|own| own.live.insert(range.start + i as usize));
                }
            }
        }
    }

    /// Steps each replica over its rows of the round's steps, and leaves
    /// `Σ rows_r · replica_r` (exact) in the accumulator, with the loss and
    /// rows, for the owners' weighted average. The bound is the sum over
    /// the replicas of each one's largest value, so the owners' check sees
    /// the same bound on any worker count.
    fn train(
        &mut self,
        ws: Workspace<'_>,
        epoch: u32,
        step: u64,
    ) -> Result<(Vec<usize>, Wide, u64, Bound), Error> {
        let mut ws = ws;
        ws.data.prepare(epoch)?;
        let k = self.round_steps(step);
        let n = ws.roles.len();
        if ws.acc.len() != n {
            *ws.acc = vec![Exact::default(); n];
        }
        if self.grad.len() != n {
            self.grad = vec![0.0; n];
        }
        // One replica leaves its values in the accumulator itself; several
        // add theirs up in `total` first.
        let several = self.replicas.len() > 1;
        if several && self.total.len() != n {
            self.total = vec![Exact::default(); n];
        }
        if self.mirror.len() != n {
            self.mirror = ws.model.params().to_vec();
        }
        let (mut loss, mut rows, mut bound) = (Wide::default(), 0u64, Bound::default());
        let mut sent = LiveSet::default();
        let mut round = Round {
            spec: &self.spec,
            penalty: self.penalty,
            fit_intercept: self.fit_intercept,
            steps_per_epoch: self.steps_per_epoch,
            grad: &mut self.grad,
            mirror: &self.mirror,
        };
        for own in &mut self.replicas {
            let out = round.run(own, &mut ws, epoch, step, k)?;
            loss += out.loss;
            rows += out.rows;
            bound += out.bound;
            for &i in own.live.indices() {
                sent.insert(i);
                if several {
                    self.total[i] += std::mem::take(&mut ws.acc[i]);
                }
            }
        }
        let mut coords = sent.indices().to_vec();
        coords.sort_unstable();
        if several {
            for &i in &coords {
                ws.acc[i] = std::mem::take(&mut self.total[i]);
            }
        }
        Ok((coords, loss, rows, bound))
    }
}

/// What every replica's round shares on a worker.
struct Round<'a> {
    spec: &'a OptimizerSpec,
    penalty: Penalty,
    fit_intercept: bool,
    steps_per_epoch: u64,
    grad: &'a mut Vec<f64>,
    mirror: &'a [f64],
}

impl Round<'_> {
    /// Steps replica `own` through the `k` steps from `step` over its rows,
    /// leaves `rows · replica` in the (otherwise zero) accumulator on its
    /// live coordinates, and puts the model's parameters back to the
    /// mirror there.
    fn run(
        &mut self,
        own: &mut Own,
        ws: &mut Workspace<'_>,
        epoch: u32,
        step: u64,
        k: u64,
    ) -> Result<RoundOut, Error> {
        let (data, model, roles) = (&mut *ws.data, &mut *ws.model, ws.roles);
        let (scratch, acc) = (&mut *ws.scratch, &mut *ws.acc);
        let (mut loss, mut rows) = (Wide::default(), 0u64);
        let mut touched: Vec<usize> = Vec::new();
        let mut coords: Vec<usize> = Vec::new();
        for j in 0..k {
            let s = step + j;
            let diverged = |message: String| Error::Diverged {
                epoch,
                step: s,
                message,
            };
            let (mut l, mut r, mut b) = (Wide::default(), 0u64, Bound::default());
            let (spec, lazy, state, clock) = (self.spec, &mut own.lazy, &mut own.state, &own.clock);
            data.step_rows_of(s, Some(own.id), |block, idx| {
                if let Some(lazy) = lazy.as_mut() {
                    // Bring what the rows read up to the replica's last step.
                    for &row in idx {
                        coords.clear();
                        model.sparse_coords(block, row, &mut |i| coords.push(i));
                        let theta = model.params_mut();
                        for &i in &coords {
                            let penalised = !roles.is_intercept(i);
                            lazy.read(spec, theta, state, clock, i, penalised);
                        }
                    }
                }
                let (part, largest) = model
                    .accumulate(block, idx, scratch, acc.into())
                    .map_err(diverged)?;
                l += Wide::from_f64(part).ok_or_else(|| diverged(loss_message(part)))?;
                b += largest;
                r += idx.len() as u64;
                Ok(())
            })?;
            loss += l;
            rows += r;
            touched.clear();
            touched.extend_from_slice(roles.dense_indices());
            touched.extend(scratch.drain_touched());
            touched.sort_unstable();
            touched.dedup();
            if !b.holds() {
                touched.iter().for_each(|&i| acc[i] = Exact::default());
                return Err(diverged(bound_message(b)));
            }
            for &i in &touched {
                let g = std::mem::take(&mut acc[i]);
                let frozen = !self.fit_intercept && roles.is_intercept(i);
                self.grad[i] = update::mean(g.to_f64(), r, frozen);
            }
            if r == 0 {
                touched.iter().for_each(|&i| self.grad[i] = 0.0);
                continue;
            }
            let step_args = update::Step {
                spec: self.spec,
                lr: update::rate(
                    self.spec,
                    u64::from(epoch) * self.steps_per_epoch + s,
                    epoch,
                ),
                penalty: self.penalty,
            };
            let dense = |i: usize| roles.is_dense(i);
            let visit = update::Visit::own_clock(
                step_args,
                own.lazy.as_mut(),
                &mut own.clock,
                &mut touched,
                &dense,
            );
            let theta = model.params_mut();
            let bad = update::apply(
                step_args,
                theta,
                self.grad,
                &mut own.state,
                &mut own.live,
                visit,
                |i| !roles.is_intercept(i),
            );
            if let Some(i) = bad {
                return Err(update::diverged(epoch, s, i, theta[i]));
            }
        }
        if let Some(lazy) = own.lazy.as_mut() {
            // The replica goes to the owners as the weights themselves.
            lazy.flush(
                self.spec,
                model.params_mut(),
                &mut own.state,
                &own.clock,
                own.live.indices(),
                |i| !roles.is_intercept(i),
            );
            let now = own.clock.now().t;
            own.clock.forget_before(now);
        }
        // rows · replica; coordinates outside the live set are exactly 0
        // (and the mirror's there are too).
        let theta = model.params_mut();
        let mut bound = Bound::default();
        for &i in own.live.indices() {
            let v = Exact::from_f64(theta[i] * rows as f64).ok_or_else(|| Error::Diverged {
                epoch,
                step,
                message: format!("a weight of replica {} is too large to average", own.id),
            })?;
            bound = bound.max(v.magnitude());
            acc[i] = v;
            theta[i] = self.mirror[i];
        }
        Ok(RoundOut { loss, rows, bound })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Pipeline;

    fn steps(replicas: &[usize]) -> LocalSteps {
        let p = Pipeline::parse(
            "[data]\ntrain = \"x.parquet\"\nlabel = \"y\"\n[model]\nkind = \"logistic\"\n[optimizer]\nkind = \"adam\"\n[train]\nstrategy = \"model-average\"\n",
            std::path::Path::new("p.toml"),
            &[],
        )
        .unwrap();
        LocalSteps {
            spec: p.optimizer,
            penalty: Penalty { l2: 0.0, l1: 0.0 },
            fit_intercept: true,
            sync_every: 1,
            steps_per_epoch: 1,
            replicas: replicas
                .iter()
                .map(|&id| {
                    Own::new(
                        id,
                        FirstOrderState::starting_at(&p.optimizer, &[0.0; 3]),
                        None,
                    )
                })
                .collect(),
            grad: Vec::new(),
            total: Vec::new(),
            mirror: Vec::new(),
        }
    }

    fn live(s: &LocalSteps) -> Vec<Vec<usize>> {
        s.replicas
            .iter()
            .map(|o| o.live.indices().to_vec())
            .collect()
    }

    #[test]
    fn replica_states_move_between_worker_counts_by_number() {
        // Two workers of two replicas each, saved; read back by one worker
        // of all four and by workers of one and three.
        let mut a = steps(&[0, 1]);
        let mut b = steps(&[2, 3]);
        for (s, base) in [(&mut a, 0), (&mut b, 2)] {
            for (k, own) in s.replicas.iter_mut().enumerate() {
                own.live.insert(base + k);
            }
        }
        let saved = vec![a.save(), b.save()];
        let mut all = steps(&[0, 1, 2, 3]);
        all.load(&saved).unwrap();
        assert_eq!(live(&all), [vec![0], vec![1], vec![2], vec![3]]);
        let mut last = steps(&[3]);
        last.load(&saved).unwrap();
        assert_eq!(live(&last), [vec![3]]);
        let err = steps(&[4]).load(&saved).unwrap_err();
        assert!(err.to_string().contains("no state of replica 4"), "{err}");
    }

    #[test]
    fn a_state_saved_before_replicas_had_numbers_is_worker_ws_replica() {
        // Payload version 2: one bare state per worker.
        let mut old = steps(&[0]);
        old.replicas[0].live.insert(2);
        let bare = bincode::serialize(&old.replicas[0].saved()).unwrap();
        let mut other = steps(&[1]);
        other.replicas[0].live.insert(1);
        let bare1 = bincode::serialize(&other.replicas[0].saved()).unwrap();
        let mut second = steps(&[1]);
        second.load(&[bare, bare1]).unwrap();
        assert_eq!(live(&second), [vec![1]]);
        assert!(steps(&[0]).load(&[b"junk".to_vec()]).is_err());
    }
}
