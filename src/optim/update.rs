//! The one optimizer step of every strategy: a shard owner's step
//! (`allreduce`, `param-server`), a worker's step of its own replica
//! (`model-average`) and of its own block (`model-parallel`) all go through
//! [`apply`]: mean gradient → rate from the schedule → the step over the
//! coordinates it must visit → gradient buffer cleared → finite check.

use super::lazy::{Clock, Lazy};
use super::{step_at, FirstOrderState, LiveSet, Penalty};
use crate::error::Error;
use crate::spec::OptimizerSpec;

/// The mean gradient of a coordinate from its sum over `rows` rows; zero
/// for an intercept that is not fitted (`frozen`).
#[inline]
pub fn mean(sum: f64, rows: u64, frozen: bool) -> f64 {
    if frozen {
        0.0
    } else {
        sum / rows.max(1) as f64
    }
}

/// The learning rate of the step after `steps` optimizer steps in `epoch`,
/// from the optimizer's base rate and schedule (0 for L-BFGS, which picks
/// its own steps).
pub fn rate(spec: &OptimizerSpec, steps: u64, epoch: u32) -> f64 {
    spec.first_order()
        .map_or(0.0, |f| f.schedule.rate(f.learning_rate, steps, epoch))
}

/// The error of a step that made parameter `index` (of the whole model)
/// non-finite, with the usual remedies.
pub fn diverged(epoch: u32, step: u64, index: usize, value: f64) -> Error {
    Error::Diverged {
        epoch,
        step,
        message: format!(
            "parameter {index} became {value} (lower optimizer.learning_rate, or set data.standardize = true)"
        ),
    }
}

/// Which coordinates a step visits.
pub enum Visit<'a> {
    /// Every coordinate (eager updates of a dense gradient). Coordinates
    /// with a non-zero gradient become live.
    All,
    /// Eager updates of a sparse gradient: the `touched` coordinates become
    /// live, and the step visits every live coordinate (the others are
    /// quiescent with a zero gradient, which no method moves).
    Live(&'a [usize]),
    /// Lazy updates: of the candidates (sorted, distinct: the coordinates
    /// the step's rows touched and the dense ones), the step visits those
    /// with a non-zero gradient or `dense`; on return the vector holds
    /// exactly the visited ones. The clock must have ticked for this step.
    Lazy {
        /// The lazy bookkeeping of the parameters.
        lazy: &'a mut Lazy,
        /// The optimizer's clock.
        clock: &'a Clock,
        /// Candidates in, visited coordinates out.
        touched: &'a mut Vec<usize>,
        /// Coordinates every step visits (intercepts, numeric weights).
        dense: &'a dyn Fn(usize) -> bool,
    },
}

/// The optimizer and the step's rate and penalties.
#[derive(Clone, Copy)]
pub struct Step<'a> {
    /// The (first-order) optimizer.
    pub spec: &'a OptimizerSpec,
    /// The rate of this step ([`rate`]).
    pub lr: f64,
    /// Penalties.
    pub penalty: Penalty,
}

/// One optimizer step on `params` from the mean gradient in `grad` (zero
/// outside the coordinates `visit` covers), with the optimizer `state` and
/// the `live` set of the same coordinates. `penalised(i)` is false for
/// intercepts. On return `grad` is zero again.
///
/// Returns the first visited coordinate that is not finite after the step,
/// if any: the caller fails the step with [`diverged`].
pub fn apply(
    step: Step<'_>,
    params: &mut [f64],
    grad: &mut [f64],
    state: &mut FirstOrderState,
    live: &mut LiveSet,
    visit: Visit<'_>,
    penalised: impl Fn(usize) -> bool,
) -> Option<usize> {
    let Step { spec, lr, penalty } = step;
    match visit {
        Visit::All => {
            for (i, &g) in grad.iter().enumerate() {
                if g != 0.0 {
                    live.insert(i);
                }
            }
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
            grad.iter_mut().for_each(|g| *g = 0.0);
            params.iter().position(|w| !w.is_finite())
        }
        Visit::Live(touched) => {
            touched.iter().for_each(|&i| live.insert(i));
            let visited = live.indices();
            step_at(
                spec,
                params,
                grad,
                state,
                lr,
                penalty,
                penalised,
                visited.iter().copied(),
            );
            visited.iter().for_each(|&i| grad[i] = 0.0);
            visited.iter().copied().find(|&i| !params[i].is_finite())
        }
        Visit::Lazy {
            lazy,
            clock,
            touched,
            dense,
        } => {
            touched.retain(|&i| grad[i] != 0.0 || dense(i));
            lazy.step(
                spec, params, grad, state, clock, lr, penalty, penalised, touched,
            );
            touched.iter().for_each(|&i| {
                grad[i] = 0.0;
                live.insert(i);
            });
            touched.iter().copied().find(|&i| !params[i].is_finite())
        }
    }
}
