//! Optimizer steps: pure functions of `(params, grad, state)`.
//!
//! They work on one shard (a slice of the parameter vector) at a time and
//! never look outside it, so sharding across workers changes nothing: the
//! owner of each shard applies the same step the single-worker run would.
//! L-BFGS needs global dot products and lives in [`lbfgs`] (one owner
//! holds the vectors) and [`vector_free`] (sharded, dot products summed
//! over the shards).

pub mod lazy;
pub mod lbfgs;
pub mod update;
pub mod vector_free;

use serde::{Deserialize, Serialize};

use crate::spec::OptimizerSpec;

/// Regularisation of the objective `mean loss + l2/2·‖w‖² + l1·‖w‖₁`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Penalty {
    /// L2 weight.
    pub l2: f64,
    /// L1 weight.
    pub l1: f64,
}

/// Per-coordinate state of the first-order methods for one shard.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FirstOrderState {
    /// Updates applied so far.
    pub t: u64,
    /// Momentum velocity, AdaGrad accumulator, or Adam's first moment.
    pub m: Vec<f64>,
    /// Adam's second moment.
    pub v: Vec<f64>,
}

impl FirstOrderState {
    /// The state of a run that starts at `params` (warm start). Only FTRL
    /// needs one: its weights are a function of its state `z`, `n`, and a
    /// zero state would put every weight back to zero at the first step.
    /// `z = −w·β/α` with `n = 0` is the state whose weight is `w` before
    /// the first step (when no penalty has accrued yet).
    pub fn starting_at(spec: &OptimizerSpec, params: &[f64]) -> FirstOrderState {
        match spec {
            OptimizerSpec::Ftrl { base, beta } if params.iter().any(|&w| w != 0.0) => {
                let alpha = base.learning_rate;
                FirstOrderState {
                    t: 0,
                    m: params.iter().map(|&w| -w * beta / alpha).collect(),
                    v: vec![0.0; params.len()],
                }
            }
            _ => FirstOrderState::default(),
        }
    }
}

/// Extends `v` with zeros to length `n`. An empty `v` is allocated zeroed
/// rather than written, so that a wide hashed model's optimizer state
/// costs pages only where its coordinates are touched.
fn zeros_to(v: &mut Vec<f64>, n: usize) {
    if v.is_empty() {
        *v = vec![0.0; n];
    } else if v.len() < n {
        v.resize(n, 0.0);
    }
}

/// Soft-thresholding: the proximal operator of `τ·|w|`.
#[inline]
pub fn soft_threshold(w: f64, tau: f64) -> f64 {
    if w > tau {
        w - tau
    } else if w < -tau {
        w + tau
    } else {
        0.0
    }
}

/// One first-order step on a shard.
///
/// `grad` is the mean loss gradient of the batch; the L2 term is added here
/// for penalised coordinates, and L1 is applied as a proximal step with the
/// coordinate's effective learning rate. `penalised(i)` tells whether local
/// coordinate `i` is a weight (true) or an intercept (false).
///
/// # Examples
/// ```
/// use tidemill::optim::{step, FirstOrderState, Penalty};
/// use tidemill::spec::{FirstOrder, OptimizerSpec, Schedule};
/// let spec = OptimizerSpec::Sgd(FirstOrder { learning_rate: 0.5, batch_size: 1, schedule: Schedule::Constant, lazy: false });
/// let mut w = vec![1.0, 1.0];
/// let mut st = FirstOrderState::default();
/// step(&spec, &mut w, &[1.0, 1.0], &mut st, 0.5, Penalty { l2: 0.0, l1: 0.0 }, |i| i == 1);
/// assert_eq!(w, vec![0.5, 0.5]);
/// ```
pub fn step(
    spec: &OptimizerSpec,
    params: &mut [f64],
    grad: &[f64],
    state: &mut FirstOrderState,
    lr: f64,
    penalty: Penalty,
    penalised: impl Fn(usize) -> bool,
) {
    step_at(
        spec,
        params,
        grad,
        state,
        lr,
        penalty,
        penalised,
        0..params.len(),
    );
}

/// Is local coordinate `i` quiescent: zero weight, zero optimizer state?
///
/// A quiescent coordinate with a zero gradient is left exactly as it is by
/// every method (each update is a product with zero), so a step may skip
/// it: [`step_at`] over the other coordinates computes bit for bit what
/// [`step`] computes. Wide hashed models are mostly quiescent.
pub fn is_quiescent(params: &[f64], state: &FirstOrderState, i: usize) -> bool {
    params[i].to_bits() == 0
        && state.m.get(i).is_none_or(|m| m.to_bits() == 0)
        && state.v.get(i).is_none_or(|v| v.to_bits() == 0)
}

/// The coordinates a step must visit: every coordinate that ever had a
/// non-zero gradient. All others are quiescent (zero weight, zero state)
/// with a zero gradient, which every method leaves as they are.
#[derive(Debug, Clone, Default)]
pub struct LiveSet {
    mark: Vec<bool>,
    list: Vec<usize>,
}

impl LiveSet {
    /// Marks coordinate `i` live (no-op if it already is).
    #[inline]
    pub fn insert(&mut self, i: usize) {
        if self.mark.len() <= i {
            self.mark.resize(i + 1, false);
        }
        if !self.mark[i] {
            self.mark[i] = true;
            self.list.push(i);
        }
    }

    /// The set of `indices` (in the order they became live), as
    /// [`LiveSet::indices`] gave them.
    pub fn from_indices(indices: &[usize]) -> LiveSet {
        let mut set = LiveSet::default();
        indices.iter().for_each(|&i| set.insert(i));
        set
    }

    /// The live coordinates, in the order they became live.
    pub fn indices(&self) -> &[usize] {
        &self.list
    }

    /// Number of live coordinates.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// True if no coordinate is live.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

/// [`step`] on the coordinates in `indices` only (each at most once); the
/// step counter advances once. The others must be quiescent with a zero
/// gradient (see [`is_quiescent`]) for the result to equal [`step`]'s.
#[allow(clippy::too_many_arguments)] // step's arguments plus the coordinates
pub fn step_at(
    spec: &OptimizerSpec,
    params: &mut [f64],
    grad: &[f64],
    state: &mut FirstOrderState,
    lr: f64,
    penalty: Penalty,
    penalised: impl Fn(usize) -> bool,
    indices: impl IntoIterator<Item = usize>,
) {
    let rates = Rates::advance(spec, state, params.len(), lr, penalty);
    rates.apply(spec, params, grad, state, indices, penalised);
}

/// What one step of a first-order method applies to every coordinate it
/// visits: the rate, the penalties and the step count.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rates {
    lr: f64,
    penalty: Penalty,
    /// Optimizer steps including this one, as `f64` (FTRL scales its
    /// penalties by it).
    t: f64,
    /// Adam's bias corrections `1 − β₁ᵗ`, `1 − β₂ᵗ`.
    c1: f64,
    c2: f64,
}

impl Rates {
    /// Counts one more step in `state` (sizing its moments for `n`
    /// coordinates) and returns the step's constants.
    pub(crate) fn advance(
        spec: &OptimizerSpec,
        state: &mut FirstOrderState,
        n: usize,
        lr: f64,
        penalty: Penalty,
    ) -> Rates {
        state.t += 1;
        let (mut c1, mut c2) = (1.0, 1.0);
        match *spec {
            OptimizerSpec::Momentum { .. } | OptimizerSpec::Adagrad { .. } => {
                zeros_to(&mut state.m, n);
            }
            OptimizerSpec::Adam { beta1, beta2, .. } => {
                zeros_to(&mut state.m, n);
                zeros_to(&mut state.v, n);
                c1 = 1.0 - beta1.powi(state.t.min(i32::MAX as u64) as i32);
                c2 = 1.0 - beta2.powi(state.t.min(i32::MAX as u64) as i32);
            }
            OptimizerSpec::Ftrl { .. } => {
                zeros_to(&mut state.m, n);
                zeros_to(&mut state.v, n);
            }
            OptimizerSpec::Sgd(_) | OptimizerSpec::Lbfgs { .. } | OptimizerSpec::Exact => {}
        }
        Rates {
            lr,
            penalty,
            t: state.t as f64,
            c1,
            c2,
        }
    }

    /// The step's update of every coordinate in `indices` (the optimizer
    /// is matched once; each arm is a loop of its own). `grad[i]` is the
    /// mean loss gradient; L2 is added here for penalised coordinates, L1
    /// is a proximal step with the coordinate's rate.
    #[inline]
    pub(crate) fn apply(
        &self,
        spec: &OptimizerSpec,
        params: &mut [f64],
        grad: &[f64],
        state: &mut FirstOrderState,
        indices: impl IntoIterator<Item = usize>,
        penalised: impl Fn(usize) -> bool,
    ) {
        let Rates {
            lr,
            penalty,
            t,
            c1,
            c2,
        } = *self;
        let (m, v) = (&mut state.m[..], &mut state.v[..]);
        // The gradient of a coordinate with weight `w`: the loss part, plus
        // L2 if it is penalised; and L1's proximal step with rate `eta`.
        let g_of = |grad: f64, w: f64, p: bool| if p { grad + penalty.l2 * w } else { grad };
        let l1 = penalty.l1 > 0.0;
        let prox = |w: f64, eta: f64, p: bool| {
            if l1 && p {
                soft_threshold(w, eta * penalty.l1)
            } else {
                w
            }
        };
        match *spec {
            OptimizerSpec::Sgd(_) => {
                for i in indices {
                    let (p, w) = (penalised(i), params[i]);
                    params[i] = prox(w - lr * g_of(grad[i], w, p), lr, p);
                }
            }
            OptimizerSpec::Momentum { momentum, .. } => {
                for i in indices {
                    let (p, w) = (penalised(i), params[i]);
                    let mi = momentum * m[i] + g_of(grad[i], w, p);
                    m[i] = mi;
                    params[i] = prox(w - lr * mi, lr, p);
                }
            }
            OptimizerSpec::Adagrad { epsilon, .. } => {
                for i in indices {
                    let (p, w) = (penalised(i), params[i]);
                    let g = g_of(grad[i], w, p);
                    let mi = m[i] + g * g;
                    m[i] = mi;
                    let eta = lr / (mi.sqrt() + epsilon);
                    params[i] = prox(w - eta * g, eta, p);
                }
            }
            OptimizerSpec::Adam {
                beta1,
                beta2,
                epsilon,
                ..
            } => {
                let (b1, b2) = (1.0 - beta1, 1.0 - beta2);
                for i in indices {
                    let (p, w) = (penalised(i), params[i]);
                    let g = g_of(grad[i], w, p);
                    let (mi, vi) = (beta1 * m[i] + b1 * g, beta2 * v[i] + b2 * g * g);
                    (m[i], v[i]) = (mi, vi);
                    let eta = lr / ((vi / c2).sqrt() + epsilon);
                    params[i] = prox(w - eta * mi / c1, eta, p);
                }
            }
            OptimizerSpec::Ftrl { beta, .. } => {
                // z and n of FTRL-Proximal (in m and v).
                for i in indices {
                    let g = grad[i];
                    let n_old = v[i];
                    let n_new = n_old + g * g;
                    let sigma = (n_new.sqrt() - n_old.sqrt()) / lr;
                    m[i] += g - sigma * params[i];
                    v[i] = n_new;
                    params[i] = ftrl_weight(m[i], n_new, t, lr, beta, penalty, penalised(i));
                }
            }
            OptimizerSpec::Lbfgs { .. } | OptimizerSpec::Exact => {}
        }
    }
}

/// FTRL-Proximal's weight in closed form from its state `z`, `n` after `t`
/// steps, with per-coordinate rate `α / (β + √n)`. Its λ1, λ2 weigh the
/// *sum* of the gradients seen; scaling them by the step count makes `l1`,
/// `l2` mean what they mean for every other optimizer.
#[inline]
pub fn ftrl_weight(
    z: f64,
    n: f64,
    t: f64,
    alpha: f64,
    beta: f64,
    penalty: Penalty,
    penalised: bool,
) -> f64 {
    let (l1, l2) = if penalised {
        (t * penalty.l1, t * penalty.l2)
    } else {
        (0.0, 0.0)
    };
    if z.abs() <= l1 {
        0.0
    } else {
        -(z - z.signum() * l1) / ((beta + n.sqrt()) / alpha + l2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{FirstOrder, Schedule};

    fn base(lr: f64) -> FirstOrder {
        FirstOrder {
            learning_rate: lr,
            batch_size: 1,
            schedule: Schedule::Constant,
            lazy: false,
        }
    }

    /// Each method minimises ½(w − 3)² + l2/2·w² to its closed form 3/(1+l2).
    #[test]
    fn every_method_finds_a_quadratic_minimum() {
        let specs = [
            OptimizerSpec::Sgd(base(0.1)),
            OptimizerSpec::Momentum {
                base: base(0.05),
                momentum: 0.9,
            },
            OptimizerSpec::Adagrad {
                base: base(1.0),
                epsilon: 1e-8,
            },
            OptimizerSpec::Adam {
                base: base(0.05),
                beta1: 0.9,
                beta2: 0.999,
                epsilon: 1e-8,
            },
        ];
        for spec in specs {
            let mut w = vec![0.0];
            let mut st = FirstOrderState::default();
            let lr = spec.first_order().unwrap().learning_rate;
            for _ in 0..5000 {
                let g = [w[0] - 3.0];
                step(
                    &spec,
                    &mut w,
                    &g,
                    &mut st,
                    lr,
                    Penalty { l2: 0.5, l1: 0.0 },
                    |_| true,
                );
            }
            assert!((w[0] - 2.0).abs() < 1e-3, "{spec:?}: {}", w[0]);
        }
    }

    proptest::proptest! {
        // Skipping quiescent coordinates with zero gradient changes nothing.
        #[test]
        fn stepping_only_live_coordinates_is_exact(
            grads in proptest::collection::vec(proptest::collection::vec(proptest::prop_oneof![proptest::strategy::Just(0.0), -2.0f64..2.0], 12), 1..6),
            which in 0usize..5,
        ) {
            let spec = [
                OptimizerSpec::Sgd(base(0.1)),
                OptimizerSpec::Momentum { base: base(0.05), momentum: 0.9 },
                OptimizerSpec::Adagrad { base: base(0.5), epsilon: 1e-8 },
                OptimizerSpec::Adam { base: base(0.05), beta1: 0.9, beta2: 0.999, epsilon: 1e-8 },
                OptimizerSpec::Ftrl { base: base(0.1), beta: 1.0 },
            ][which];
            let penalty = Penalty { l2: 0.01, l1: 0.001 };
            let (mut all, mut some) = (vec![0.0; 12], vec![0.0; 12]);
            let (mut st_all, mut st_some) = (FirstOrderState::default(), FirstOrderState::default());
            for g in &grads {
                step(&spec, &mut all, g, &mut st_all, 0.1, penalty, |i| i > 0);
                let live: Vec<usize> = (0..12)
                    .filter(|&i| g[i] != 0.0 || !is_quiescent(&some, &st_some, i))
                    .collect();
                step_at(&spec, &mut some, g, &mut st_some, 0.1, penalty, |i| i > 0, live);
            }
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            proptest::prop_assert_eq!(bits(&all), bits(&some));
        }
    }

    /// With L1 the minimum of ½(w − 0.3)² + 0.5|w| is exactly 0.
    #[test]
    fn proximal_l1_reaches_exact_zero() {
        let spec = OptimizerSpec::Sgd(base(0.1));
        let mut w = vec![1.0, 1.0];
        let mut st = FirstOrderState::default();
        for _ in 0..1000 {
            let g = [w[0] - 0.3, w[1] - 0.3];
            step(
                &spec,
                &mut w,
                &g,
                &mut st,
                0.1,
                Penalty { l2: 0.0, l1: 0.5 },
                |i| i == 0,
            );
        }
        assert_eq!(w[0], 0.0);
        assert!((w[1] - 0.3).abs() < 1e-9, "intercept is not penalised");
    }
}
