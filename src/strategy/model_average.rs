//! `model-average` (local SGD): every worker steps its own replica of the
//! model through `sync_every` steps of its own rows, then the shard owners
//! replace the parameters by the rows-weighted mean of the replicas
//! (`Σ rows_w · replica_w / Σ rows_w`, summed exactly). Each worker keeps
//! its optimizer state; only the weights are averaged.
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
use crate::dataflow::fold::ShardGrad;
use crate::dataflow::gradient::{Replica, Workspace};
use crate::dataflow::{bound_message, loss_message, Failure, ShardValues};
use crate::error::Error;
use crate::exact::{Bound, Exact, Wide};
use crate::optim::lazy::{Clock, Lazy, Stamp};
use crate::optim::{update, FirstOrderState, LiveSet, Penalty};
use crate::spec::OptimizerSpec;

/// The `model-average` strategy.
#[derive(Debug, Clone, Copy, Default)]
pub struct ModelAverage;

impl Strategy for ModelAverage {
    fn name(&self) -> &'static str {
        "model-average"
    }

    /// Each worker's replica keeps its own optimizer state, and which rows
    /// a replica trains on depends on the worker count.
    fn resumes_on_any_worker_count(&self) -> bool {
        false
    }

    fn one_worker_count_reason(&self) -> &'static str {
        "each worker's replica keeps its own optimizer state"
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
        let mut replica = LocalSteps {
            spec: p.optimizer,
            penalty,
            fit_intercept: p.model.fit_intercept,
            sync_every,
            steps_per_epoch,
            state: FirstOrderState::starting_at(&p.optimizer, input.init.unwrap_or(&[])),
            grad: Vec::new(),
            lazy: lazy.then(|| Lazy::new(&p.optimizer, penalty)),
            clock: Clock::default(),
            live: LiveSet::default(),
            mirror: Vec::new(),
        };
        if let Some(saved) = &input.resume {
            let index = worker.index();
            let bytes = saved.replicas.get(index).ok_or_else(|| {
                Failure::from(&Error::Internal(format!(
                    "the checkpoint holds no replica of worker {index}"
                )))
            })?;
            replica.load(bytes).map_err(|e| Failure::from(&e))?;
            // The workers start from the checkpoint's weights: as if the
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
/// the workers of `rows_w · replica_w`, where the workers trained `rows`
/// rows in all: `Σ rows_w · replica_w / Σ rows_w`.
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

/// Local training of a replica: the worker applies the optimizer itself
/// for `sync_every` steps, then sends `rows · replica` to the owners.
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
    /// This worker's optimizer state (kept across rounds, never averaged).
    state: FirstOrderState,
    /// Gradient buffer, zero between steps.
    grad: Vec<f64>,
    /// Lazy updates of the replica (`None`: every step visits every live
    /// coordinate).
    lazy: Option<Lazy>,
    /// The replica's clock (lazy updates).
    clock: Clock,
    /// Replica coordinates that may be non-quiescent (had a local gradient,
    /// or arrived non-zero from the owners).
    live: LiveSet,
    /// The parameters as the owners last sent them.
    mirror: Vec<f64>,
}

impl LocalSteps {
    /// Continues from the state [`Replica::save`] gave.
    fn load(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let bad = |what: &str| Error::Internal(format!("a saved replica {what}"));
        let saved: ReplicaState = bincode::deserialize(bytes).map_err(|_| bad("does not read"))?;
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

impl Replica for LocalSteps {
    fn round_steps(&self, step: u64) -> u64 {
        self.sync_every
            .min(self.steps_per_epoch.saturating_sub(step))
    }

    fn save(&self) -> Vec<u8> {
        let state = ReplicaState {
            state: self.state.clone(),
            lazy: self.lazy.as_ref().map(|l| l.current_at().to_vec()),
            clock: self.clock.stamps(),
            live: self.live.indices().to_vec(),
        };
        // An empty state does not read back: a resume then fails loudly.
        bincode::serialize(&state).unwrap_or_default()
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
                        self.live.insert(range.start + i);
                    }
                }
            }
            ShardValues::Delta(e) => {
                for &(i, v) in e {
                    self.mirror[range.start + i as usize] = v;
                    self.live.insert(range.start + i as usize);
                }
            }
        }
    }

    fn restore(&self, theta: &mut [f64]) {
        // The replica moved away from what the owners sent where it
        // stepped locally; deltas are relative to what they sent.
        for &i in self.live.indices() {
            if let Some(&v) = self.mirror.get(i) {
                theta[i] = v;
            }
        }
    }

    /// Steps the replica over this worker's rows of the round's steps, and
    /// leaves `rows · replica` (exact) in the accumulator, with the loss and
    /// rows, for the owners' weighted average.
    fn train(
        &mut self,
        ws: Workspace<'_>,
        epoch: u32,
        step: u64,
    ) -> Result<(Vec<usize>, Wide, u64, Bound), Error> {
        let Workspace {
            data,
            model,
            roles,
            scratch,
            acc,
        } = ws;
        data.prepare(epoch)?;
        let k = self.round_steps(step);
        let n = roles.len();
        if acc.len() != n {
            *acc = vec![Exact::default(); n];
        }
        if self.grad.len() != n {
            self.grad = vec![0.0; n];
        }
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
            let (spec, lazy, state, clock) =
                (&self.spec, &mut self.lazy, &mut self.state, &self.clock);
            data.step_rows(s, |block, idx| {
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
                    .accumulate(block, idx, scratch, acc)
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
                spec: &self.spec,
                lr: update::rate(
                    &self.spec,
                    u64::from(epoch) * self.steps_per_epoch + s,
                    epoch,
                ),
                penalty: self.penalty,
            };
            let dense = |i: usize| roles.is_dense(i);
            let visit = update::Visit::own_clock(
                step_args,
                self.lazy.as_mut(),
                &mut self.clock,
                &mut touched,
                &dense,
            );
            let theta = model.params_mut();
            let bad = update::apply(
                step_args,
                theta,
                &mut self.grad,
                &mut self.state,
                &mut self.live,
                visit,
                |i| !roles.is_intercept(i),
            );
            if let Some(i) = bad {
                return Err(update::diverged(epoch, s, i, theta[i]));
            }
        }
        if let Some(lazy) = self.lazy.as_mut() {
            // The replica goes to the owners as the weights themselves.
            lazy.flush(
                &self.spec,
                model.params_mut(),
                &mut self.state,
                &self.clock,
                self.live.indices(),
                |i| !roles.is_intercept(i),
            );
            let now = self.clock.now().t;
            self.clock.forget_before(now);
        }
        // rows · replica; coordinates outside the live set are exactly 0.
        let mut live = self.live.indices().to_vec();
        live.sort_unstable();
        let theta = model.params();
        let mut bound = Bound::default();
        for &i in &live {
            let v = Exact::from_f64(theta[i] * rows as f64).ok_or_else(|| Error::Diverged {
                epoch,
                step,
                message: "a replica weight is too large to average".into(),
            })?;
            bound = bound.max(v.magnitude());
            acc[i] = v;
        }
        Ok((live, loss, rows, bound))
    }
}
