//! The one optimizer step of every strategy: a shard owner's step
//! (`allreduce`, `param-server`), a worker's step of its own replica
//! (`model-average`) and of its own block (`model-parallel`) all go through
//! [`apply`]: mean gradient → rate from the schedule → the step over the
//! coordinates it must visit → gradient buffer cleared → finite check.

use super::lazy::{Clock, Lazy};
use super::{step, step_at, FirstOrderState, LiveSet, Penalty};
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

impl<'a> Visit<'a> {
    /// The visit of a step that owns its clock (a replica, a block): lazy
    /// over the candidates in `touched` when `lazy` is set (ticking `clock`
    /// for this step first), else eager over the live coordinates.
    pub fn own_clock(
        step: Step<'_>,
        lazy: Option<&'a mut Lazy>,
        clock: &'a mut Clock,
        touched: &'a mut Vec<usize>,
        dense: &'a dyn Fn(usize) -> bool,
    ) -> Visit<'a> {
        match lazy {
            Some(lazy) => {
                clock.tick(step.lr, step.penalty);
                Visit::Lazy {
                    lazy,
                    clock,
                    touched,
                    dense,
                }
            }
            None => Visit::Live(touched),
        }
    }
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
    step_args: Step<'_>,
    params: &mut [f64],
    grad: &mut [f64],
    state: &mut FirstOrderState,
    live: &mut LiveSet,
    visit: Visit<'_>,
    penalised: impl Fn(usize) -> bool,
) -> Option<usize> {
    let Step { spec, lr, penalty } = step_args;
    match visit {
        Visit::All => {
            for (i, &g) in grad.iter().enumerate() {
                if g != 0.0 {
                    live.insert(i);
                }
            }
            step(spec, params, grad, state, lr, penalty, penalised);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::step;
    use crate::spec::{FirstOrder, Schedule};

    fn adam() -> OptimizerSpec {
        OptimizerSpec::Adam {
            base: FirstOrder {
                learning_rate: 0.1,
                batch_size: 1,
                schedule: Schedule::Constant,
                lazy: false,
            },
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
        }
    }

    fn sgd() -> OptimizerSpec {
        OptimizerSpec::Sgd(FirstOrder {
            learning_rate: 0.1,
            batch_size: 1,
            schedule: Schedule::Constant,
            lazy: true,
        })
    }

    const PENALTY: Penalty = Penalty {
        l2: 0.01,
        l1: 0.001,
    };

    /// A gradient that touches coordinates 1, 4 and 6 of 8 (0 is an intercept).
    fn gradient() -> (Vec<f64>, Vec<usize>) {
        let mut g = vec![0.0; 8];
        for (i, v) in [(1, 0.5), (4, -2.0), (6, 0.25)] {
            g[i] = v;
        }
        (g, vec![1, 4, 6])
    }

    /// Visiting every coordinate, the live ones, or each step's plain
    /// `step` over the whole vector give the same bits: the untouched
    /// coordinates are quiescent with a zero gradient.
    #[test]
    fn all_live_and_the_plain_step_agree_bit_for_bit() {
        let spec = adam();
        let penalised = |i: usize| i != 0;
        let mut reference = vec![0.0; 8];
        let mut reference_state = FirstOrderState::default();
        let mut runs: Vec<(Vec<f64>, FirstOrderState, LiveSet)> = (0..2)
            .map(|_| (vec![0.0; 8], FirstOrderState::default(), LiveSet::default()))
            .collect();
        for _ in 0..5 {
            let (g, touched) = gradient();
            step(
                &spec,
                &mut reference,
                &g,
                &mut reference_state,
                0.1,
                PENALTY,
                penalised,
            );
            for (k, (w, state, live)) in runs.iter_mut().enumerate() {
                let mut grad = g.clone();
                let visit = if k == 0 {
                    Visit::All
                } else {
                    Visit::Live(&touched)
                };
                let s = Step {
                    spec: &spec,
                    lr: 0.1,
                    penalty: PENALTY,
                };
                assert_eq!(apply(s, w, &mut grad, state, live, visit, penalised), None);
                assert!(grad.iter().all(|&g| g == 0.0), "the buffer is cleared");
            }
        }
        for (w, _, live) in &runs {
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(w), bits(&reference));
            let mut l = live.indices().to_vec();
            l.sort_unstable();
            assert_eq!(l, [1, 4, 6]);
        }
    }

    /// Lazy SGD without a penalty visits only what has a gradient or is
    /// dense, and moves those exactly as an eager step would.
    #[test]
    fn a_lazy_step_visits_the_touched_and_dense_coordinates() {
        let spec = sgd();
        let none = Penalty { l2: 0.0, l1: 0.0 };
        let mut lazy = Lazy::new(&spec, none);
        let mut clock = Clock::default();
        clock.tick(0.1, none);
        let (mut grad, _) = gradient();
        let eager_grad = grad.clone();
        // Candidates: 0 (dense), 1, 4, 6 and 5 (touched by a row, zero sum).
        let mut touched = vec![0, 1, 4, 5, 6];
        let (mut w, mut state, mut live) =
            (vec![0.0; 8], FirstOrderState::default(), LiveSet::default());
        let dense = |i: usize| i == 0;
        let visit = Visit::Lazy {
            lazy: &mut lazy,
            clock: &clock,
            touched: &mut touched,
            dense: &dense,
        };
        let s = Step {
            spec: &spec,
            lr: 0.1,
            penalty: none,
        };
        assert_eq!(
            apply(s, &mut w, &mut grad, &mut state, &mut live, visit, |i| i
                != 0),
            None
        );
        assert_eq!(touched, [0, 1, 4, 6], "5 had no gradient and is not dense");
        let mut eager = vec![0.0; 8];
        step(
            &spec,
            &mut eager,
            &eager_grad,
            &mut FirstOrderState::default(),
            0.1,
            none,
            |i| i != 0,
        );
        assert_eq!(w, eager);
        assert!(grad.iter().all(|&g| g == 0.0));
    }

    #[test]
    fn the_first_non_finite_coordinate_is_reported() {
        let spec = sgd();
        let (mut w, mut state, mut live) =
            (vec![0.0; 4], FirstOrderState::default(), LiveSet::default());
        let mut grad = vec![0.0, f64::INFINITY, 0.0, f64::NAN];
        let s = Step {
            spec: &spec,
            lr: 0.1,
            penalty: PENALTY,
        };
        assert_eq!(
            apply(
                s,
                &mut w,
                &mut grad,
                &mut state,
                &mut live,
                Visit::All,
                |_| true
            ),
            Some(1)
        );
        let e = diverged(3, 7, 1, w[1]);
        assert_eq!(e.exit_code(), 6);
        assert!(e.to_string().contains("parameter 1 became"), "{e}");
    }

    #[test]
    fn the_mean_is_zero_for_a_frozen_intercept() {
        assert_eq!(mean(6.0, 4, false), 1.5);
        assert_eq!(mean(6.0, 4, true), 0.0);
        assert_eq!(
            mean(6.0, 0, false),
            6.0,
            "no rows: the sum itself (it is zero then)"
        );
    }
}
