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
pub(crate) const C1: f64 = 1e-4;
/// Backtracking halvings before the search gives up.
pub(crate) const MAX_BACKTRACKS: u32 = 60;

/// Why L-BFGS ended before its iteration limit.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Convergence {
    /// The largest component of the objective's (pseudo-)gradient, this
    /// value, fell to the gradient tolerance.
    Gradient(f64),
    /// An iteration changed the objective by this relative amount, at most
    /// the tolerance.
    ObjectiveChange(f64),
    /// No step decreases the objective further: the line search gave up,
    /// or a steepest-descent step left it unchanged to the last bit.
    NoDecrease,
}

impl Convergence {
    /// The name the run summary gives it (`converged_by`).
    pub fn name(self) -> &'static str {
        match self {
            Convergence::Gradient(_) => "gradient",
            Convergence::ObjectiveChange(_) => "objective_change",
            Convergence::NoDecrease => "no_decrease",
        }
    }

    /// A sentence for the log, with the tolerances the run had.
    pub fn describe(self, tolerance: f64, gradient_tolerance: Option<f64>) -> String {
        match self {
            Convergence::Gradient(g) => format!(
                "the largest gradient component is {g:.3e} ≤ optimizer.gradient_tolerance = {:e}",
                gradient_tolerance.unwrap_or(0.0)
            ),
            Convergence::ObjectiveChange(r) => format!(
                "the last iteration changed the objective by a relative {r:.3e} ≤ optimizer.tolerance = {tolerance:e}"
            ),
            Convergence::NoDecrease => {
                "no step along the search direction decreases the objective".to_string()
            }
        }
    }
}

/// Curvature pairs `(s, y, 1 / sᵀy)`, oldest first.
type History = VecDeque<(Vec<f64>, Vec<f64>, f64)>;

/// The two-loop recursion: `q` (the gradient) times the inverse Hessian
/// approximation of `h`. Each pass updates `q` and takes the next pair's
/// dot product with it: the arithmetic of separate passes, in the same
/// order, with half the passes.
fn two_loop(h: &History, mut q: Vec<f64>) -> Vec<f64> {
    let mut alphas = Vec::with_capacity(h.len());
    let newest_first: Vec<usize> = (0..h.len()).rev().collect();
    let mut d = newest_first.first().map_or(0.0, |&j| dot(&h[j].0, &q));
    for (k, &j) in newest_first.iter().enumerate() {
        let (_, y, rho) = &h[j];
        let a = rho * d;
        let next = newest_first.get(k + 1).map(|&n| h[n].0.as_slice());
        d = add_scaled_then_dot(&mut q, -a, y, next);
        alphas.push(a);
    }
    if let Some((s, y, _)) = h.back() {
        let gamma = dot(s, y) / dot(y, y);
        q.iter_mut().for_each(|qi| *qi *= gamma);
    }
    let mut d = h.front().map_or(0.0, |(_, y, _)| dot(y, &q));
    for (j, ((s, _, rho), a)) in h.iter().zip(alphas.iter().rev()).enumerate() {
        let b = rho * d;
        let next = h.get(j + 1).map(|(_, y, _)| y.as_slice());
        d = add_scaled_then_dot(&mut q, a - b, s, next);
    }
    q
}

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
    /// The line search found no decrease: the current iterate is final
    /// ([`Convergence::NoDecrease`]).
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
    history: History,
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
    /// Why the last accepted iterate passed the convergence test (not
    /// kept in checkpoints: a run resumed at its converged iterate reports
    /// convergence without the cause).
    #[serde(skip)]
    converged_by: Option<Convergence>,
    /// The (pseudo-)gradient at `x`, once computed (empty until then: not
    /// kept in checkpoints, it follows from `x` and `g`).
    #[serde(skip)]
    pg: Vec<f64>,
    /// The step being searched is steepest descent cut to length 1 (the
    /// gradient is longer): its objective change says nothing about
    /// convergence. Set by [`Lbfgs::propose`], as every search starts.
    #[serde(skip)]
    unit_step: bool,
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `q += c·v`, returning `dot(next, q)` of the updated `q`: one pass for
/// the two, summed in index order as [`dot`] sums (the same bits). With
/// `c = −a` it is `q −= a·v` to the bit.
fn add_scaled_then_dot(q: &mut [f64], c: f64, v: &[f64], next: Option<&[f64]>) -> f64 {
    let mut acc = std::iter::empty::<f64>().sum::<f64>();
    match next {
        Some(n) => {
            for ((qi, vi), ni) in q.iter_mut().zip(v).zip(n) {
                *qi += vi * c;
                acc += ni * *qi;
            }
        }
        None => q.iter_mut().zip(v).for_each(|(qi, vi)| *qi += vi * c),
    }
    acc
}

/// An accepted iterate, as the stopping rule sees it.
pub(crate) struct AcceptedStep {
    /// The objective before the step.
    pub old: f64,
    /// The objective after it.
    pub new: f64,
    /// The largest component of the (pseudo-)gradient after it.
    pub pg_max: f64,
    /// The step was steepest descent cut to length 1.
    pub unit_step: bool,
    /// The step was steepest descent.
    pub steepest: bool,
}

/// What the stopping rule says of an accepted iterate.
pub(crate) enum Verdict {
    /// The run ends here.
    Converged(Convergence),
    /// The objective did not move on a curvature-scaled step: forget the
    /// curvature pairs (the next step is steepest descent) and go on.
    ForgetPairs,
    /// Go on.
    Continue,
}

impl AcceptedStep {
    /// L-BFGS-B's tests, in order (see docs/optimizers.md), for both
    /// L-BFGS implementations.
    pub(crate) fn verdict(&self, tolerance: f64, gradient_tolerance: Option<f64>) -> Verdict {
        let (old, fx, pg_max) = (self.old, self.new, self.pg_max);
        let rel = (old - fx).abs() / old.abs().max(fx.abs()).max(1e-300);
        match gradient_tolerance {
            Some(g) if pg_max <= g => Verdict::Converged(Convergence::Gradient(pg_max)),
            // Not on a steepest-descent step cut to length 1: that
            // length knows nothing of the problem's scale (on a label
            // in the trillions it moves the objective by a sliver).
            _ if tolerance > 0.0 && rel <= tolerance && !self.unit_step => {
                Verdict::Converged(Convergence::ObjectiveChange(rel))
            }
            _ if pg_max == 0.0 => Verdict::Converged(Convergence::Gradient(0.0)),
            // A step that leaves the objective unchanged to the last
            // bit: on a curvature-scaled direction, perhaps a poor
            // one, so the next step is steepest descent; on a steepest
            // descent step, the objective's floating-point floor,
            // where no run gets further.
            _ if rel == 0.0 && !self.steepest => Verdict::ForgetPairs,
            _ if rel == 0.0 => Verdict::Converged(Convergence::NoDecrease),
            _ => Verdict::Continue,
        }
    }
}

/// One coordinate of OWL-QN's pseudo-gradient: the smooth gradient `gi`
/// plus the L1 term's one-sided derivative at `xi` that points downhill (0
/// where neither side does); `gi` itself when `l1 = 0` or not penalised.
pub(crate) fn pseudo_component(gi: f64, xi: f64, l1: f64, penalised: bool) -> f64 {
    if l1 == 0.0 || !penalised {
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
}

/// The sign of the orthant OWL-QN keeps a coordinate in: that of `x`, or
/// of `−pg` where `x` is 0.
pub(crate) fn orthant(x: f64, pg: f64) -> f64 {
    if x != 0.0 {
        x.signum()
    } else {
        -pg.signum()
    }
}

/// OWL-QN's projection of a trial point `t` onto the orthant of `x` (of
/// `−pg` where `x` is 0): penalised coordinates that cross it become 0.
pub(crate) fn project_to_orthant(t: &mut [f64], x: &[f64], pg: &[f64], penalised: &[bool]) {
    for i in 0..t.len() {
        if !penalised[i] {
            continue;
        }
        if t[i] * orthant(x[i], pg[i]) <= 0.0 {
            t[i] = 0.0;
        }
    }
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
            converged_by: None,
            pg: Vec::new(),
            unit_step: false,
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
            .zip(&self.penalised)
            .map(|((&gi, &xi), &p)| pseudo_component(gi, xi, l1, p))
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
            project_to_orthant(&mut t, &self.x, pg, &self.penalised);
        }
        t
    }

    /// Computes a search direction from the current iterate and returns the
    /// first trial point along it.
    pub fn propose(&mut self) -> Vec<f64> {
        let pg = self.take_pg();
        let mut q = two_loop(&self.history, pg.clone());
        q.iter_mut().for_each(|v| *v = -*v);
        let mut dir = q;
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
        self.unit_step = self.alpha < 1.0;
        self.alpha = self.alpha.min(1.0);
        self.dir = dir;
        self.backtracks = 0;
        self.trial = self.trial_point(&pg);
        self.pg = pg;
        self.trial.clone()
    }

    /// The (pseudo-)gradient at `x`, computed if not yet known; put it
    /// back in `self.pg` after use.
    fn take_pg(&mut self) -> Vec<f64> {
        let pg = std::mem::take(&mut self.pg);
        if pg.len() == self.x.len() && !self.g.is_empty() {
            pg
        } else {
            self.pseudo_grad(&self.x, &self.g)
        }
    }

    /// Also ends the run when the largest component of the objective's
    /// (pseudo-)gradient is at most `g`. With a relative `tolerance` of 0
    /// this is the only test (besides an accepted step that leaves the
    /// objective unchanged to the last bit): a stopping point that depends
    /// on the optimum, not on the path to it (what a warm-started run must
    /// match).
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
        let pg = self.take_pg();
        // dot(pg, trial − x), without the vector unless the step is taken.
        let mut decrease = std::iter::empty::<f64>().sum::<f64>();
        for ((p, t), x) in pg.iter().zip(&self.trial).zip(&self.x) {
            decrease += p * (t - x);
        }
        if fx.is_finite() && fx <= self.f + C1 * decrease {
            let step: Vec<f64> = self.trial.iter().zip(&self.x).map(|(t, x)| t - x).collect();
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
            self.pg = self.pseudo_grad(&self.x, &self.g);
            let pg_max = self.pg.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let step = AcceptedStep {
                old,
                new: fx,
                pg_max,
                unit_step: self.unit_step,
                steepest: self.steepest,
            };
            let by = match step.verdict(self.tolerance, self.gradient_tolerance) {
                Verdict::Converged(c) => Some(c),
                Verdict::ForgetPairs => {
                    self.history.clear();
                    None
                }
                Verdict::Continue => None,
            };
            self.converged_by = by;
            Next::Accepted {
                objective: fx,
                converged: by.is_some(),
            }
        } else {
            self.backtracks += 1;
            if self.backtracks > MAX_BACKTRACKS {
                self.converged_by = Some(Convergence::NoDecrease);
                return Next::Stalled;
            }
            self.alpha *= 0.5;
            self.trial = self.trial_point(&pg);
            self.pg = pg;
            Next::Evaluate(self.trial.clone())
        }
    }

    /// Objective at the current iterate.
    pub fn objective_value(&self) -> f64 {
        self.f
    }

    /// Why the run converged, when the last accepted iterate (or a
    /// stalled line search) ended it.
    pub fn converged_by(&self) -> Option<Convergence> {
        self.converged_by
    }
}

/// Runs `opt` on `eval` (the loss and its gradient at a point) for at
/// most `evaluations` evaluations, until it converges or stalls; returns
/// the iterate.
#[cfg(test)]
pub(crate) fn drive(
    opt: &mut Lbfgs,
    evaluations: usize,
    mut eval: impl FnMut(&[f64]) -> (f64, Vec<f64>),
) -> Vec<f64> {
    let mut point = opt.first_point().to_vec();
    for _ in 0..evaluations {
        let (f, g) = eval(&point);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Minimises a quadratic ½ xᵀAx − bᵀx (+ penalties) to its closed form.
    fn run(a: &[[f64; 2]; 2], b: [f64; 2], penalty: Penalty, penalised: Vec<bool>) -> Vec<f64> {
        let mut opt = Lbfgs::new(vec![0.0, 0.0], 5, 1e-15, penalty, penalised);
        drive(&mut opt, 500, |point| {
            let g = vec![
                a[0][0] * point[0] + a[0][1] * point[1] - b[0],
                a[1][0] * point[0] + a[1][1] * point[1] - b[1],
            ];
            let f = 0.5 * (point[0] * g[0] + point[1] * g[1])
                - 0.5 * (b[0] * point[0] + b[1] * point[1]);
            (f, g)
        })
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

    /// The fused two-loop recursion gives the bits of the textbook one
    /// (separate dot products and updates).
    #[test]
    fn the_fused_two_loop_recursion_is_bit_identical_to_the_textbook_one() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        };
        let n = 1001;
        for pairs in [0, 1, 3, 10] {
            let mut h = History::new();
            for _ in 0..pairs {
                let s: Vec<f64> = (0..n).map(|_| next()).collect();
                let y: Vec<f64> = (0..n).map(|_| next() * 1e-3).collect();
                let rho = 1.0 / dot(&s, &y);
                h.push_back((s, y, rho));
            }
            let g: Vec<f64> = (0..n).map(|_| next()).collect();
            let mut want = g.clone();
            let mut alphas = Vec::new();
            for (s, y, rho) in h.iter().rev() {
                let a = rho * dot(s, &want);
                want.iter_mut().zip(y).for_each(|(qi, yi)| *qi -= a * yi);
                alphas.push(a);
            }
            if let Some((s, y, _)) = h.back() {
                let gamma = dot(s, y) / dot(y, y);
                want.iter_mut().for_each(|qi| *qi *= gamma);
            }
            for ((s, y, rho), a) in h.iter().zip(alphas.iter().rev()) {
                let b = rho * dot(y, &want);
                want.iter_mut()
                    .zip(s)
                    .for_each(|(qi, si)| *qi += si * (a - b));
            }
            let got = two_loop(&h, g);
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{pairs} pairs");
        }
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
