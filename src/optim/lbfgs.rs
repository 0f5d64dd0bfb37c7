//! Full-batch L-BFGS, with OWL-QN (orthant-wise) steps when `l1 > 0`.
//!
//! A state machine driven by function evaluations: the dataflow evaluates
//! the mean loss and its gradient at the point [`Lbfgs::observe`] asked for,
//! and feeds them back. Backtracking (Armijo) line search, as in OWL-QN
//! (Andrew & Gao, 2007). Intercepts are not penalised.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::Penalty;

/// Sufficient-decrease constant of the line search.
const C1: f64 = 1e-4;
/// Backtracking halvings before the search gives up.
const MAX_BACKTRACKS: u32 = 60;

/// What the optimizer wants next.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Evaluate the loss and gradient at this point.
    Evaluate(Vec<f64>),
    /// A new iterate was accepted (see [`Lbfgs::iterate`]); call
    /// [`Lbfgs::propose`] to continue, or stop.
    Accepted {
        /// Objective (with penalties) at the new iterate.
        objective: f64,
        /// True if the convergence test passed.
        converged: bool,
    },
    /// The line search found no decrease: the current iterate is final.
    Stalled,
}

/// L-BFGS / OWL-QN state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lbfgs {
    memory: usize,
    tolerance: f64,
    penalty: Penalty,
    penalised: Vec<bool>,
    x: Vec<f64>,
    f: f64,
    g: Vec<f64>,
    history: VecDeque<(Vec<f64>, Vec<f64>, f64)>,
    dir: Vec<f64>,
    alpha: f64,
    trial: Vec<f64>,
    backtracks: u32,
    started: bool,
    iterations: u32,
    /// See [`Lbfgs::with_gradient_tolerance`].
    gradient_tolerance: Option<f64>,
    /// Whether the step being searched is steepest descent (no curvature
    /// pairs): only such a step can show the objective's floor.
    steepest: bool,
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

impl Lbfgs {
    /// Starts at `x0`; `penalised[i]` is false for intercepts.
    pub fn new(
        x0: Vec<f64>,
        memory: usize,
        tolerance: f64,
        penalty: Penalty,
        penalised: Vec<bool>,
    ) -> Lbfgs {
        Lbfgs {
            memory,
            tolerance,
            penalty,
            penalised,
            trial: x0.clone(),
            x: x0,
            f: f64::INFINITY,
            g: Vec::new(),
            history: VecDeque::new(),
            dir: Vec::new(),
            alpha: 1.0,
            backtracks: 0,
            started: false,
            iterations: 0,
            gradient_tolerance: None,
            steepest: true,
        }
    }

    /// The first point to evaluate.
    pub fn first_point(&self) -> &[f64] {
        &self.trial
    }

    /// The current (last accepted) iterate.
    pub fn iterate(&self) -> &[f64] {
        &self.x
    }

    /// Accepted iterations so far.
    pub fn iterations(&self) -> u32 {
        self.iterations
    }

    fn objective(&self, x: &[f64], loss: f64) -> f64 {
        let mut r = 0.0;
        for (i, &w) in x.iter().enumerate() {
            if self.penalised[i] {
                r += 0.5 * self.penalty.l2 * w * w + self.penalty.l1 * w.abs();
            }
        }
        loss + r
    }

    fn smooth_grad(&self, x: &[f64], loss_grad: &[f64]) -> Vec<f64> {
        loss_grad
            .iter()
            .zip(x)
            .enumerate()
            .map(|(i, (&g, &w))| {
                if self.penalised[i] {
                    g + self.penalty.l2 * w
                } else {
                    g
                }
            })
            .collect()
    }

    /// The OWL-QN pseudo-gradient (the gradient itself when `l1 = 0`).
    fn pseudo_grad(&self, x: &[f64], g: &[f64]) -> Vec<f64> {
        let l1 = self.penalty.l1;
        g.iter()
            .zip(x)
            .enumerate()
            .map(|(i, (&gi, &xi))| {
                if l1 == 0.0 || !self.penalised[i] {
                    gi
                } else if xi > 0.0 {
                    gi + l1
                } else if xi < 0.0 {
                    gi - l1
                } else if gi + l1 < 0.0 {
                    gi + l1
                } else if gi - l1 > 0.0 {
                    gi - l1
                } else {
                    0.0
                }
            })
            .collect()
    }

    fn trial_point(&self, pg: &[f64]) -> Vec<f64> {
        let mut t: Vec<f64> = self
            .x
            .iter()
            .zip(&self.dir)
            .map(|(x, d)| x + self.alpha * d)
            .collect();
        if self.penalty.l1 > 0.0 {
            for i in 0..t.len() {
                if !self.penalised[i] {
                    continue;
                }
                let orthant = if self.x[i] != 0.0 {
                    self.x[i].signum()
                } else {
                    -pg[i].signum()
                };
                if t[i] * orthant <= 0.0 {
                    t[i] = 0.0;
                }
            }
        }
        t
    }

    /// Computes a search direction from the current iterate and returns the
    /// first trial point along it.
    pub fn propose(&mut self) -> Vec<f64> {
        let pg = self.pseudo_grad(&self.x, &self.g);
        let mut q = pg.clone();
        let mut alphas = Vec::with_capacity(self.history.len());
        for (s, y, rho) in self.history.iter().rev() {
            let a = rho * dot(s, &q);
            q.iter_mut().zip(y).for_each(|(qi, yi)| *qi -= a * yi);
            alphas.push(a);
        }
        if let Some((s, y, _)) = self.history.back() {
            let gamma = dot(s, y) / dot(y, y);
            q.iter_mut().for_each(|qi| *qi *= gamma);
        }
        for ((s, y, rho), a) in self.history.iter().zip(alphas.iter().rev()) {
            let b = rho * dot(y, &q);
            q.iter_mut().zip(s).for_each(|(qi, si)| *qi += si * (a - b));
        }
        let mut dir: Vec<f64> = q.iter().map(|v| -v).collect();
        if self.penalty.l1 > 0.0 {
            for i in 0..dir.len() {
                if self.penalised[i] && dir[i] * pg[i] >= 0.0 {
                    dir[i] = 0.0;
                }
            }
        }
        if dot(&dir, &pg) >= 0.0 {
            // Not a descent direction: forget the curvature pairs.
            self.history.clear();
            dir = pg.iter().map(|v| -v).collect();
        }
        self.steepest = self.history.is_empty();
        self.alpha = if self.steepest {
            1.0 / dot(&pg, &pg).sqrt().max(1e-300)
        } else {
            1.0
        };
        self.alpha = self.alpha.min(1.0);
        self.dir = dir;
        self.backtracks = 0;
        self.trial = self.trial_point(&pg);
        self.trial.clone()
    }

    /// Ends the run when the largest component of the objective's
    /// (pseudo-)gradient is at most `g` (or an accepted step leaves the
    /// objective unchanged to the last bit), instead of on the relative
    /// objective change: a stopping point that depends on the optimum, not
    /// on the path to it (what a warm-started run must match).
    pub fn with_gradient_tolerance(mut self, g: Option<f64>) -> Lbfgs {
        self.gradient_tolerance = g;
        self
    }

    /// Feeds the mean loss and its gradient at the last requested point.
    pub fn observe(&mut self, loss: f64, loss_grad: &[f64]) -> Next {
        let fx = self.objective(&self.trial, loss);
        let gx = self.smooth_grad(&self.trial, loss_grad);
        if !self.started {
            self.started = true;
            self.f = fx;
            self.g = gx;
            return Next::Evaluate(self.propose());
        }
        let pg = self.pseudo_grad(&self.x, &self.g);
        let step: Vec<f64> = self.trial.iter().zip(&self.x).map(|(t, x)| t - x).collect();
        let decrease = dot(&pg, &step);
        if fx.is_finite() && fx <= self.f + C1 * decrease {
            let y: Vec<f64> = gx.iter().zip(&self.g).map(|(a, b)| a - b).collect();
            let sy = dot(&step, &y);
            if sy > 1e-12 * dot(&y, &y).max(f64::MIN_POSITIVE) {
                if self.history.len() == self.memory {
                    self.history.pop_front();
                }
                self.history.push_back((step, y, 1.0 / sy));
            }
            let old = self.f;
            self.x = std::mem::take(&mut self.trial);
            self.f = fx;
            self.g = gx;
            self.iterations += 1;
            let pg = self.pseudo_grad(&self.x, &self.g);
            let pg_max = pg.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let rel = (old - fx).abs() / old.abs().max(fx.abs()).max(1e-300);
            let converged = match self.gradient_tolerance {
                Some(g) if pg_max <= g => true,
                // A step that leaves the objective unchanged to the last
                // bit: on a curvature-scaled direction, perhaps a poor
                // one, so the next step is steepest descent; on a steepest
                // descent step, the objective's floating-point floor,
                // where no run gets further.
                Some(_) if rel == 0.0 && !self.steepest => {
                    self.history.clear();
                    false
                }
                Some(_) => rel == 0.0,
                None => rel <= self.tolerance || pg_max == 0.0,
            };
            Next::Accepted {
                objective: fx,
                converged,
            }
        } else {
            self.backtracks += 1;
            if self.backtracks > MAX_BACKTRACKS {
                return Next::Stalled;
            }
            self.alpha *= 0.5;
            self.trial = self.trial_point(&pg);
            Next::Evaluate(self.trial.clone())
        }
    }

    /// Objective at the current iterate.
    pub fn objective_value(&self) -> f64 {
        self.f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Minimises a quadratic ½ xᵀAx − bᵀx (+ penalties) to its closed form.
    fn run(a: &[[f64; 2]; 2], b: [f64; 2], penalty: Penalty, penalised: Vec<bool>) -> Vec<f64> {
        let mut opt = Lbfgs::new(vec![0.0, 0.0], 5, 1e-15, penalty, penalised);
        let mut point = opt.first_point().to_vec();
        for _ in 0..500 {
            let g = [
                a[0][0] * point[0] + a[0][1] * point[1] - b[0],
                a[1][0] * point[0] + a[1][1] * point[1] - b[1],
            ];
            let f = 0.5 * (point[0] * g[0] + point[1] * g[1])
                - 0.5 * (b[0] * point[0] + b[1] * point[1]);
            match opt.observe(f, &g) {
                Next::Evaluate(p) => point = p,
                Next::Accepted {
                    converged: true, ..
                }
                | Next::Stalled => break,
                Next::Accepted { .. } => point = opt.propose(),
            }
        }
        opt.iterate().to_vec()
    }

    #[test]
    fn quadratic_with_l2_matches_closed_form() {
        // (A + I)x = b with A = [[3,1],[1,2]], b = [1,1]: x = [1/7, 2/7]... solved below.
        let x = run(
            &[[3.0, 1.0], [1.0, 2.0]],
            [1.0, 1.0],
            Penalty { l2: 1.0, l1: 0.0 },
            vec![true, true],
        );
        // [[4,1],[1,3]] x = [1,1] → x = [2/11, 3/11]
        assert!((x[0] - 2.0 / 11.0).abs() < 1e-8, "{x:?}");
        assert!((x[1] - 3.0 / 11.0).abs() < 1e-8, "{x:?}");
    }

    #[test]
    fn a_gradient_tolerance_stops_at_the_gradient() {
        // An ill-conditioned quadratic: A = diag(1e4, 1), b = [1, 1].
        let (a, b) = ([1e4, 1.0], [1.0, 1.0]);
        let mut opt = Lbfgs::new(
            vec![0.0, 0.0],
            5,
            1e-15,
            Penalty { l2: 0.0, l1: 0.0 },
            vec![true, true],
        )
        .with_gradient_tolerance(Some(1e-12));
        // (1e-12 is below what the objective resolves: the floor ends it.)
        let mut point = opt.first_point().to_vec();
        let mut done = false;
        for _ in 0..500 {
            let g = [a[0] * point[0] - b[0], a[1] * point[1] - b[1]];
            let f = 0.5 * (a[0] * point[0] * point[0] + a[1] * point[1] * point[1])
                - b[0] * point[0]
                - b[1] * point[1];
            match opt.observe(f, &g) {
                Next::Evaluate(p) => point = p,
                Next::Accepted {
                    converged: true, ..
                } => {
                    done = true;
                    break;
                }
                Next::Stalled => break,
                Next::Accepted { .. } => point = opt.propose(),
            }
        }
        assert!(done, "no convergence");
        // At the optimum to what an f64 objective resolves: the gradient
        // is at most 1e-12, or what is left of it would lower the
        // objective by less than its last bit (here 3e-7 on the stiff
        // coordinate, 5e-18 of objective); either way x is x*.
        let x = opt.iterate();
        let g = [a[0] * x[0] - b[0], a[1] * x[1] - b[1]];
        let gap = g[0] * g[0] / (2.0 * a[0]) + g[1] * g[1] / (2.0 * a[1]);
        assert!(gap <= 2.0 * f64::EPSILON * 0.5, "{g:?}: {gap}");
        assert!(
            (x[0] - 1e-4).abs() < 1e-9 && (x[1] - 1.0).abs() < 1e-8,
            "{x:?}"
        );
    }

    #[test]
    fn owlqn_zeroes_small_coordinates() {
        // Separable: ½·2x₀² − 1·x₀ + ½·2x₁² − 0.1·x₁ with l1 = 0.5 → x₀ = 0.25, x₁ = 0.
        let x = run(
            &[[2.0, 0.0], [0.0, 2.0]],
            [1.0, 0.1],
            Penalty { l2: 0.0, l1: 0.5 },
            vec![true, true],
        );
        assert!((x[0] - 0.25).abs() < 1e-8, "{x:?}");
        assert_eq!(x[1], 0.0);
    }
}
