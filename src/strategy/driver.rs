//! The round state machine of the shard owners: which phase comes next and
//! what the owned shards' parameters are. Every owner runs the same
//! deterministic progression, so owners agree without talking.

use std::collections::BTreeMap;
use std::ops::Range;

use super::super::dataflow::{Control, Failure, ParamMsg, Phase};
use crate::error::Error;
use crate::model::Layout;
use crate::optim::lbfgs::{Lbfgs, Next};
use crate::optim::{self, FirstOrderState, Penalty};
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
}

/// The owner-side logic of the synchronous loop.
#[derive(Debug)]
pub struct Driver {
    shards: Vec<OwnedShard>,
    mode: Mode,
    layout: Layout,
    penalty: Penalty,
    fit_intercept: bool,
    epochs: u32,
    keep_best: bool,
    phase: Phase,
    steps: u64,
}

impl Driver {
    /// The driver for the shards in `owned` (ids into `ranges`).
    pub fn new(
        pipeline: &Pipeline,
        layout: Layout,
        ranges: &[Range<usize>],
        owned: &[u32],
        steps_per_epoch: u64,
    ) -> Driver {
        let penalty = Penalty {
            l2: pipeline.model.l2,
            l1: pipeline.model.l1,
        };
        let shards: Vec<OwnedShard> = owned
            .iter()
            .map(|&id| {
                let range = ranges[id as usize].clone();
                OwnedShard {
                    id,
                    params: vec![0.0; range.len()],
                    range,
                    state: FirstOrderState::default(),
                    best: None,
                }
            })
            .collect();
        let average = pipeline.train.strategy == crate::spec::Strategy::ModelAverage;
        let mode = match pipeline.optimizer {
            _ if average => Mode::Average {
                steps_per_epoch,
                sync_every: pipeline.train.sync_every.unwrap_or(steps_per_epoch).max(1),
            },
            OptimizerSpec::Lbfgs { memory, tolerance } => {
                let n = layout.len();
                let penalised = (0..n).map(|i| !layout.is_intercept(i)).collect();
                Mode::Lbfgs {
                    opt: Box::new(Lbfgs::new(
                        vec![0.0; n],
                        memory,
                        tolerance,
                        penalty,
                        penalised,
                    )),
                    converged: false,
                    evaluations: 0,
                }
            }
            spec => Mode::FirstOrder {
                spec,
                steps_per_epoch,
            },
        };
        Driver {
            shards,
            mode,
            layout,
            penalty,
            fit_intercept: pipeline.model.fit_intercept,
            epochs: pipeline.train.epochs,
            keep_best: pipeline.train.early_stopping.is_some(),
            phase: Phase::Train { epoch: 0, step: 0 },
            steps: 0,
        }
    }

    fn emit(&self, phase: Phase, pick_best: bool) -> Vec<ParamMsg> {
        self.shards
            .iter()
            .map(|s| ParamMsg {
                shard: s.id,
                phase,
                values: match (&s.best, pick_best) {
                    (Some(b), true) => b.clone(),
                    _ => s.params.clone(),
                },
            })
            .collect()
    }

    /// The parameters of round 0.
    pub fn start(&mut self) -> Vec<ParamMsg> {
        if let Mode::Lbfgs { opt, .. } = &self.mode {
            let x0 = opt.first_point().to_vec();
            for s in &mut self.shards {
                s.params = x0[s.range.clone()].to_vec();
            }
        }
        self.emit(self.phase, false)
    }

    fn set_all(&mut self, x: &[f64]) {
        for s in &mut self.shards {
            s.params.copy_from_slice(&x[s.range.clone()]);
        }
    }

    /// Moves `k` steps on from step `step` of `epoch`: the next training
    /// round, or the epoch's evaluation.
    fn advance(&mut self, epoch: u32, step: u64, k: u64, steps_per_epoch: u64) -> Vec<ParamMsg> {
        self.steps += k;
        self.phase = if step + k < steps_per_epoch {
            Phase::Train {
                epoch,
                step: step + k,
            }
        } else {
            Phase::Eval {
                epoch: epoch + 1,
                steps: self.steps,
                objective: None,
            }
        };
        self.emit(self.phase, false)
    }

    /// Applies a training round's summed gradient (per owned shard).
    pub fn on_gradients(
        &mut self,
        sums: &BTreeMap<u32, Vec<f64>>,
        loss: f64,
        rows: u64,
    ) -> Result<Vec<ParamMsg>, Failure> {
        let Phase::Train { epoch, step } = self.phase else {
            return Ok(Vec::new());
        };
        let layout = self.layout;
        let fit_intercept = self.fit_intercept;
        let mean = |range: &Range<usize>, sum: &[f64]| -> Vec<f64> {
            sum.iter()
                .enumerate()
                .map(|(i, g)| {
                    if !fit_intercept && layout.is_intercept(range.start + i) {
                        0.0
                    } else {
                        g / rows.max(1) as f64
                    }
                })
                .collect()
        };
        match &mut self.mode {
            Mode::Average {
                steps_per_epoch,
                sync_every,
            } => {
                let k = (*sync_every).min(*steps_per_epoch - step);
                if rows > 0 {
                    for s in &mut self.shards {
                        if let Some(sum) = sums.get(&s.id) {
                            // Σ rows_w · replica_w / Σ rows_w
                            s.params = sum.iter().map(|v| v / rows as f64).collect();
                        }
                    }
                }
                let steps_per_epoch = *steps_per_epoch;
                Ok(self.advance(epoch, step, k, steps_per_epoch))
            }
            Mode::FirstOrder {
                spec,
                steps_per_epoch,
            } => {
                if rows > 0 {
                    let base = spec.first_order().map(|f| (f.learning_rate, f.schedule));
                    let lr = base.map_or(0.0, |(eta, sch)| sch.rate(eta, self.steps, epoch));
                    for s in &mut self.shards {
                        let Some(sum) = sums.get(&s.id) else { continue };
                        let grad = mean(&s.range, sum);
                        let start = s.range.start;
                        optim::step(
                            spec,
                            &mut s.params,
                            &grad,
                            &mut s.state,
                            lr,
                            self.penalty,
                            |i| !layout.is_intercept(start + i),
                        );
                        if let Some(i) = s.params.iter().position(|w| !w.is_finite()) {
                            return Err(Failure::from(&Error::Diverged {
                                epoch,
                                step,
                                message: format!("parameter {} became {} (lower optimizer.learning_rate, or set data.standardize = true)", start + i, s.params[i]),
                            }));
                        }
                    }
                }
                let steps_per_epoch = *steps_per_epoch;
                Ok(self.advance(epoch, step, 1, steps_per_epoch))
            }
            Mode::Lbfgs {
                opt,
                converged,
                evaluations,
            } => {
                if self.shards.is_empty() {
                    return Ok(Vec::new());
                }
                *evaluations += 1;
                let full = &self.shards[0];
                let grad = mean(&full.range, sums.get(&full.id).map_or(&[][..], |v| v));
                let loss = loss / rows.max(1) as f64;
                match opt.observe(loss, &grad) {
                    Next::Evaluate(p) => {
                        // Full batch: every evaluation is step 0 of epoch 0.
                        self.phase = Phase::Train { epoch: 0, step: 0 };
                        self.set_all(&p);
                    }
                    Next::Accepted {
                        objective,
                        converged: c,
                    } => {
                        *converged = c;
                        self.phase = Phase::Eval {
                            epoch: opt.iterations(),
                            steps: *evaluations,
                            objective: Some(objective),
                        };
                        let x = opt.iterate().to_vec();
                        self.set_all(&x);
                    }
                    Next::Stalled => {
                        self.phase = Phase::Final {
                            epochs: opt.iterations(),
                            objective: Some(opt.objective_value()),
                        };
                        let x = opt.iterate().to_vec();
                        self.set_all(&x);
                    }
                }
                Ok(self.emit(self.phase, false))
            }
        }
    }

    /// Applies the collector's decision after an evaluation round.
    pub fn on_control(&mut self, control: &Control) -> Vec<ParamMsg> {
        let Phase::Eval {
            epoch, objective, ..
        } = self.phase
        else {
            return Vec::new();
        };
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
                }
            );
        if done {
            self.phase = Phase::Final {
                epochs: epoch,
                objective,
            };
            return self.emit(self.phase, self.keep_best);
        }
        match &mut self.mode {
            Mode::FirstOrder { .. } | Mode::Average { .. } => {
                self.phase = Phase::Train { epoch, step: 0 };
            }
            Mode::Lbfgs { opt, .. } => {
                let p = opt.propose();
                self.phase = Phase::Train { epoch: 0, step: 0 };
                self.set_all(&p);
            }
        }
        self.emit(self.phase, false)
    }
}
