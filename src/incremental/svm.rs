//! The exact optimum of a linear SVM (`model.kind = "hinge"`) kept with an
//! `[output] state`, so that a forget reaches the optimum a retrain
//! reaches (docs/incremental.md).
//!
//! The hinge loss has no derivative at its kink, and L-BFGS stops short of
//! the optimum (about 1e-5 above it). Here the problem is solved through
//! its dual, started from the L-BFGS model, to a **certified** relative
//! duality gap of [`GAP`]:
//!
//! `mean max(0, 1 − s_i(w·x_i + b)) + l2/2·‖w‖²` (the intercept `b` not
//! penalised) is `l2 ·` the C-SVM primal `½‖w‖² + C Σ ξ_i`, `C = 1/(n·l2)`,
//! whose dual is `max Σ α_i − ½‖Σ α_i s_i x_i‖²` over `0 ≤ α ≤ C`,
//! `Σ α_i s_i = 0`, with `w = Σ α_i s_i x_i`. Two moves alternate:
//!
//! - **dual coordinate descent** at a fixed bias (Hsieh et al. 2008, as in
//!   LIBLINEAR): cheap passes that find which rows are at 0, at `C`, or
//!   free (on the margin);
//! - **an exact step** on the free rows: their optimality conditions
//!   (`w·x_i + b = s_i`, `Σ α_i s_i = 0`) are a linear system in their
//!   `α` and the bias, solved by Cholesky; `α` moves towards its solution
//!   as far as the box allows, and a row that reaches a bound leaves the
//!   free set (an active-set method). Descent alone converges slowly
//!   inside the free rows, whose Gram matrix is ill-conditioned; this step
//!   lands on the optimum once the free set is right.
//!
//! After each, the bias is the best one for `w` (found exactly among the
//! kinks of the loss) and the solution is checked by weak duality: `α`,
//! made to satisfy `Σ α_i s_i = 0`, bounds the optimum from below. A gap
//! still above [`GAP`] when the passes run out is an error (exit 6), never
//! a model.
//!
//! Everything runs on one thread over every row (process 0), in the rows'
//! order in `data.train` and with a fixed seed: the same bits on any worker
//! count, as the L-BFGS start is. When the exact step ends the search, the
//! solution is a function of the free set it found (a forget and a
//! retrain wrote the same bits in the measurements); only the certified
//! gap is promised.

use std::path::Path;

use crate::data::encode::{decode, Block, ClassMap, LabelUse, Origin};
use crate::data::partition::WINDOW_ROWS;
use crate::error::{Error, Result};
use crate::model::file::ModelFile;
use crate::model::LinearModel;
use crate::source::DataSource;

/// The relative duality gap a solution is certified to: the objective is
/// within this fraction of the optimum.
pub const GAP: f64 = 1e-10;

/// Coordinate-descent passes over the rows, at most, for one solve.
const MAX_PASSES: u64 = 20_000;

/// Work, at most, for one solve, counted in multiply-adds: a pass of
/// descent costs the rows' entries, an exact step its Gram matrix and
/// factorisation. A problem the exact step cannot finish fails in bounded
/// time (about a minute or two here) instead of running on.
const MAX_WORK: f64 = 2e11;

/// Passes between two exact steps on the free rows.
const ROUND_PASSES: u64 = 50;

/// The span of the projected gradients at which descent at a fixed bias
/// has converged.
const INNER_EPS: f64 = 1e-8;

/// Free rows the exact step takes at most: it forms and factorises their
/// Gram matrix (`m²` entries, `m³/3` operations).
const MAX_FREE: usize = 2000;

/// Solves of the exact step, each after a free row reached a bound.
const MAX_FREE_ROUNDS: usize = 50;

/// Rounds of refinement of the exact step's solution.
const REFINE: usize = 3;

/// How near the margin (`|s_i(w·x_i + b) − 1|`) a row at a bound is
/// taken into the exact step.
const ON_MARGIN: f64 = 1e-6;

/// The rows of a hinge problem, as the model's margins see them: numeric
/// values as decoded (`f32`, preprocessed) and the hashed slots of each
/// row with their signs summed per slot.
#[derive(Debug, Default)]
pub struct Rows {
    p: usize,
    d: usize,
    dense: Vec<f32>,
    start: Vec<usize>,
    slots: Vec<u32>,
    vals: Vec<f64>,
    sign: Vec<f64>,
    q: Vec<f64>,
    /// How many rows of the data each row stands for: rows with the same
    /// values and label are one row of the problem, with their `α` boxes
    /// summed (`0 ≤ α ≤ count·C`), so repeats neither slow descent nor
    /// crowd the exact step.
    count: Vec<f64>,
    /// The rows of the data (`Σ count`).
    total: u64,
    /// Each distinct row's index, by its values' bits.
    seen: std::collections::HashMap<Vec<u64>, usize>,
}

impl Rows {
    /// No rows yet, of `p` numeric features among `d` weights.
    pub fn new(p: usize, d: usize) -> Rows {
        Rows {
            p,
            d,
            start: vec![0],
            ..Rows::default()
        }
    }

    /// The number of distinct rows.
    pub fn len(&self) -> usize {
        self.sign.len()
    }

    /// True if there are none.
    pub fn is_empty(&self) -> bool {
        self.sign.is_empty()
    }

    /// Appends the rows of `block` (labels 0 / 1); a row equal to one
    /// already held (values and label) adds to its count.
    pub fn push_block(&mut self, block: &Block) {
        let mut merged: Vec<(u32, f64)> = Vec::with_capacity(block.c);
        let mut key: Vec<u64> = Vec::new();
        for i in 0..block.rows {
            let x = &block.dense[i * block.p..(i + 1) * block.p];
            merged.clear();
            let h = &block.hashed[i * block.c..(i + 1) * block.c];
            let s = &block.signs[i * block.c..(i + 1) * block.c];
            merged.extend(h.iter().zip(s).map(|(&h, &s)| (h, f64::from(s))));
            merged.sort_by_key(|e| e.0);
            let mut k = 0;
            let mut kept = 0;
            while k < merged.len() {
                let slot = merged[k].0;
                let mut v = 0.0;
                while k < merged.len() && merged[k].0 == slot {
                    v += merged[k].1;
                    k += 1;
                }
                if v != 0.0 {
                    merged[kept] = (slot, v);
                    kept += 1;
                }
            }
            merged.truncate(kept);
            let sign = 2.0 * block.label.at(i) - 1.0;
            key.clear();
            key.push(sign.to_bits());
            key.extend(x.iter().map(|v| u64::from(v.to_bits())));
            for &(slot, v) in &merged {
                key.push(u64::from(slot));
                key.push(v.to_bits());
            }
            self.total += 1;
            if let Some(&j) = self.seen.get(&key) {
                self.count[j] += 1.0;
                continue;
            }
            self.seen.insert(key.clone(), self.sign.len());
            self.dense.extend_from_slice(x);
            let mut q: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
            for &(slot, v) in &merged {
                self.slots.push(slot);
                self.vals.push(v);
                q += v * v;
            }
            self.start.push(self.slots.len());
            self.sign.push(sign);
            self.q.push(q);
            self.count.push(1.0);
        }
    }

    /// `w · x_i` (`w` without the intercept: numeric weights, then slots).
    fn dot(&self, w: &[f64], i: usize) -> f64 {
        let p = self.p;
        let mut m = 0.0;
        for (wj, &xj) in w[..p].iter().zip(&self.dense[i * p..(i + 1) * p]) {
            m += wj * f64::from(xj);
        }
        for k in self.start[i]..self.start[i + 1] {
            m += w[p + self.slots[k] as usize] * self.vals[k];
        }
        m
    }

    /// Zeroes the entries of `w` that row `i` touches.
    fn clear(&self, w: &mut [f64], i: usize) {
        w[..self.p].iter_mut().for_each(|v| *v = 0.0);
        for k in self.start[i]..self.start[i + 1] {
            w[self.p + self.slots[k] as usize] = 0.0;
        }
    }

    /// `w += a · x_i`.
    fn add(&self, w: &mut [f64], i: usize, a: f64) {
        let p = self.p;
        for (wj, &xj) in w[..p].iter_mut().zip(&self.dense[i * p..(i + 1) * p]) {
            *wj += a * f64::from(xj);
        }
        for k in self.start[i]..self.start[i + 1] {
            w[p + self.slots[k] as usize] += a * self.vals[k];
        }
    }
}

/// A certified solution.
#[derive(Debug, Clone)]
pub struct Solution {
    /// `[b, w…]`, in the model's layout.
    pub theta: Vec<f64>,
    /// The objective `mean hinge + l2/2·‖w‖²`.
    pub objective: f64,
    /// The certified relative gap: the objective is at most this fraction
    /// above the optimum.
    pub gap: f64,
    /// Coordinate-descent passes over the rows.
    pub passes: u64,
}

/// The dual iterate: `α`, and `w = Σ α_i s_i x_i` kept with it.
struct Dual<'a> {
    rows: &'a Rows,
    /// `C`, per row of the data.
    c: f64,
    /// Each row's upper bound, `count·C`.
    cap: Vec<f64>,
    alpha: Vec<f64>,
    w: Vec<f64>,
    order: Vec<usize>,
    rng: u64,
    passes: u64,
    /// Multiply-adds so far (see [`MAX_WORK`]).
    work: f64,
}

impl Dual<'_> {
    /// `w` summed again from `α` (the updates' rounding dropped).
    fn refresh(&mut self) {
        self.w.iter_mut().for_each(|v| *v = 0.0);
        for i in 0..self.rows.len() {
            if self.alpha[i] != 0.0 {
                self.rows
                    .add(&mut self.w, i, self.alpha[i] * self.rows.sign[i]);
            }
        }
    }

    fn shuffle(&mut self) {
        // splitmix64 driving Fisher–Yates: a fixed sequence, so the result
        // is the same on every run.
        for i in (1..self.order.len()).rev() {
            self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.rng;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let j = (z % (i as u64 + 1)) as usize;
            self.order.swap(i, j);
        }
    }

    /// Dual coordinate descent at bias `b` until the projected gradients
    /// span at most `eps` (LIBLINEAR's rule: true), or for `budget`
    /// passes (false).
    fn descend(&mut self, b: f64, eps: f64, budget: u64) -> std::result::Result<bool, String> {
        self.refresh();
        let rows = self.rows;
        for _ in 0..budget {
            self.shuffle();
            self.passes += 1;
            self.work += (rows.dense.len() + rows.slots.len()) as f64;
            let (mut hi, mut lo) = (f64::NEG_INFINITY, f64::INFINITY);
            for &i in &self.order {
                let s = rows.sign[i];
                let g = s * (rows.dot(&self.w, i) + b) - 1.0;
                let (a, c) = (self.alpha[i], self.cap[i]);
                let pg = if a <= 0.0 {
                    g.min(0.0)
                } else if a >= c {
                    g.max(0.0)
                } else {
                    g
                };
                hi = hi.max(pg);
                lo = lo.min(pg);
                if pg == 0.0 {
                    continue;
                }
                let next = if rows.q[i] > 0.0 {
                    (a - g / rows.q[i]).clamp(0.0, c)
                } else if g < 0.0 {
                    c
                } else {
                    0.0
                };
                if next != a {
                    rows.add(&mut self.w, i, (next - a) * s);
                    self.alpha[i] = next;
                }
            }
            if !(hi - lo).is_finite() {
                return Err(
                    "the dual of the hinge problem diverged (a value is not finite)".into(),
                );
            }
            if hi - lo <= eps {
                self.refresh();
                return Ok(true);
            }
        }
        self.refresh();
        Ok(false)
    }

    /// The solution at bias `b` with the current `w`.
    fn solution(&self, b: f64, loss: f64, gap: f64, l2: f64) -> Solution {
        let mut theta = Vec::with_capacity(self.w.len() + 1);
        theta.push(b);
        theta.extend_from_slice(&self.w);
        let n = self.rows.total as f64;
        Solution {
            objective: loss / n + 0.5 * l2 * self.w.iter().map(|v| v * v).sum::<f64>(),
            theta,
            gap,
            passes: self.passes,
        }
    }

    /// The optimality conditions on the rows `free`, the other rows' `α`
    /// held where they are (at 0 or `C`): `w·x_i + b = s_i` for every
    /// free row, solved exactly for the free rows' `α` (not clipped to the
    /// box) at the bias `fixed`, or (`None`) for the bias too, with
    /// `Σ α_i s_i = 0`. `None` if the system is singular beyond a tiny
    /// ridge.
    fn kkt(&self, free: &[usize], fixed: Option<f64>) -> Option<(Vec<f64>, f64)> {
        let rows = self.rows;
        let m = free.len();
        let mut is_free = vec![false; rows.len()];
        free.iter().for_each(|&i| is_free[i] = true);
        // v: the other rows' part of w; t: their part of Σ α s.
        let mut v = vec![0.0; rows.d];
        let mut t = 0.0;
        for (i, (&a, &free)) in self.alpha.iter().zip(&is_free).enumerate() {
            if !free && a != 0.0 {
                rows.add(&mut v, i, a * rows.sign[i]);
                t += a * rows.sign[i];
            }
        }
        let r: Vec<f64> = free
            .iter()
            .map(|&i| rows.sign[i] - rows.dot(&v, i))
            .collect();
        let gram = Gram::new(rows, free)?;
        // Kμ + b1 = r with 1ᵀμ = −t (or b fixed), solved with the
        // ridged factor and refined against K itself: each round removes
        // all but ridge/(λ + ridge) of the error along K's eigenvector of
        // eigenvalue λ, so a few make the solution exact where K is
        // regular (the null space's share does not change w).
        let z = match fixed {
            Some(_) => Vec::new(),
            None => gram.solve(&vec![1.0; m]),
        };
        let sz: f64 = z.iter().sum();
        if fixed.is_none() && sz.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
            return None;
        }
        let solve = |r: &[f64], t: f64| -> (Vec<f64>, f64) {
            match fixed {
                Some(_) => (gram.solve(r), 0.0),
                None => {
                    let u = gram.solve(r);
                    let b = (u.iter().sum::<f64>() - t) / sz;
                    (u.iter().zip(&z).map(|(u, z)| u - b * z).collect(), b)
                }
            }
        };
        let rhs: Vec<f64> = match fixed {
            Some(b) => r.iter().map(|v| v - b).collect(),
            None => r,
        };
        let (mut mu, mut b) = solve(&rhs, -t);
        for _ in 0..REFINE {
            let k_mu = gram.apply(&mu);
            let res: Vec<f64> = rhs.iter().zip(&k_mu).map(|(r, k)| r - k - b).collect();
            let res_t = -t - mu.iter().sum::<f64>();
            let (dmu, db) = solve(&res, res_t);
            mu.iter_mut().zip(&dmu).for_each(|(x, d)| *x += d);
            b += db;
        }
        let b = fixed.unwrap_or(b);
        let alpha: Vec<f64> = free
            .iter()
            .zip(&mu)
            .map(|(&i, m)| m * rows.sign[i])
            .collect();
        (b.is_finite() && alpha.iter().all(|a| a.is_finite())).then_some((alpha, b))
    }

    /// The exact step on the free rows (`0 < α_i < C`) at bias `b` (or,
    /// `joint`, moving the bias too): coordinate descent finds which rows
    /// are free quickly, then converges slowly inside them (their Gram
    /// matrix is ill-conditioned). The step solves their optimality
    /// conditions ([`Dual::kkt`]) and moves `α` towards that solution as
    /// far as the box allows; a row that reaches a bound leaves the free
    /// set and the conditions are solved again (an active-set method on
    /// the face; at a fixed bias every move raises the dual). Returns the
    /// bias of the last solution, or `None` if there was no step to take.
    fn exact_step(&mut self, b: f64, joint: bool) -> Option<f64> {
        let rows = self.rows;
        // The free rows, and those at a bound that lie on the margin: one
        // of them may belong inside the box.
        let mut free: Vec<usize> = (0..rows.len())
            .filter(|&i| {
                let a = self.alpha[i];
                (a > 0.0 && a < self.cap[i])
                    || (rows.sign[i] * (rows.dot(&self.w, i) + b) - 1.0).abs() <= ON_MARGIN
            })
            .collect();
        let mut bias = None;
        for _ in 0..MAX_FREE_ROUNDS {
            if free.is_empty() || free.len() > MAX_FREE {
                tracing::debug!(free = free.len(), "hinge dual: no exact step");
                break;
            }
            let m = free.len() as f64;
            let entries = (rows.dense.len() + rows.slots.len()) as f64 / rows.len() as f64;
            self.work += m * m * entries / 2.0 + m * m * m / 3.0;
            let (target, b) = self.kkt(&free, (!joint).then_some(b))?;
            // A row at a bound whose solution lies beyond it stays there.
            let before = free.len();
            let mut k = 0;
            free.retain(|&i| {
                let (a, t, c) = (self.alpha[i], target[k], self.cap[i]);
                k += 1;
                !((a <= 0.0 && t < 0.0) || (a >= c && t > c))
            });
            if free.len() < before {
                continue;
            }
            bias = Some(b);
            let mut tau = 1.0f64;
            for (&i, &t) in free.iter().zip(&target) {
                let (a, c) = (self.alpha[i], self.cap[i]);
                if t > c {
                    tau = tau.min((c - a) / (t - a));
                } else if t < 0.0 {
                    tau = tau.min(a / (a - t));
                }
            }
            for (&i, &t) in free.iter().zip(&target) {
                let (a, c) = (self.alpha[i], self.cap[i]);
                let next = if tau >= 1.0 { t } else { a + tau * (t - a) };
                self.alpha[i] = if tau < 1.0 && (t > c && next >= c - 1e-15 * c) {
                    c
                } else if tau < 1.0 && (t < 0.0 && next <= 1e-15 * c) {
                    0.0
                } else {
                    next.clamp(0.0, c)
                };
            }
            if tau >= 1.0 {
                break;
            }
            free.retain(|&i| self.alpha[i] > 0.0 && self.alpha[i] < self.cap[i]);
        }
        self.refresh();
        bias
    }

    /// The bias for the current `w` (the best one, nearest `b`) and the
    /// certified gap of the solution it makes: `(b, objective, gap)`.
    fn certify(&self, b: f64) -> std::result::Result<(f64, f64, f64), String> {
        let overflow = || {
            "the dual of the hinge problem overflowed (a weight is not finite): standardise the features (data.standardize = true) or raise model.l2".to_string()
        };
        if !self.w.iter().all(|v| v.is_finite()) || !b.is_finite() {
            return Err(overflow());
        }
        let (lo, hi) = bias_range(self.rows, &self.w)
            .ok_or_else(|| "the exact hinge solution needs rows of both classes".to_string())?;
        if !(lo.is_finite() && hi.is_finite()) {
            return Err(overflow());
        }
        let best = b.clamp(lo, hi);
        let (value, loss) = primal(self.rows, &self.w, best, self.c);
        let bound = lower_bound(self.rows, &self.alpha);
        let gap = (value - bound) / value;
        if !gap.is_finite() {
            return Err(overflow());
        }
        Ok((best, loss, gap.max(0.0)))
    }
}

/// The Gram matrix `K = X_F X_Fᵀ` of the free rows (at most
/// [`MAX_FREE`]), formed and factorised (Cholesky) to solve with
/// `K + ridge·I`. `K` is positive semidefinite, singular where free rows
/// repeat: the tiny ridge (1e-12 of its largest diagonal entry) makes it
/// definite, and the refinement against `K` itself in [`Dual::kkt`]
/// removes its effect where `K` is regular.
struct Gram {
    m: usize,
    k: Vec<f64>,
    factor: Vec<f64>,
}

impl Gram {
    fn new(rows: &Rows, free: &[usize]) -> Option<Gram> {
        let m = free.len();
        let largest = free
            .iter()
            .map(|&i| rows.q[i])
            .fold(0.0f64, f64::max)
            .max(1e-300);
        // Through a scattered copy of each free row.
        let mut k = vec![0.0; m * m];
        let mut scatter = vec![0.0; rows.d];
        for (a, &i) in free.iter().enumerate() {
            rows.add(&mut scatter, i, 1.0);
            for (bb, &j) in free.iter().enumerate().skip(a) {
                let kij = rows.dot(&scatter, j);
                k[a * m + bb] = kij;
                k[bb * m + a] = kij;
            }
            rows.clear(&mut scatter, i);
        }
        let mut ridge = 1e-12 * largest;
        let factor = loop {
            let mut a = k.clone();
            (0..m).for_each(|i| a[i * m + i] += ridge);
            if let Ok(l) = super::solve::factor(a, m, &|_| 0.0) {
                break l;
            }
            ridge *= 100.0;
            if ridge > 1e-6 * largest {
                return None;
            }
        };
        Some(Gram { m, k, factor })
    }

    /// `K μ`.
    fn apply(&self, mu: &[f64]) -> Vec<f64> {
        let m = self.m;
        (0..m)
            .map(|a| {
                self.k[a * m..(a + 1) * m]
                    .iter()
                    .zip(mu)
                    .map(|(x, y)| x * y)
                    .sum()
            })
            .collect()
    }

    /// `(K + ridge·I)⁻¹ r`.
    fn solve(&self, r: &[f64]) -> Vec<f64> {
        super::solve::factor_solve(&self.factor, r.to_vec(), self.m)
    }
}

/// The optimal range of the bias for the weights `w`: the mean hinge loss
/// is convex and piecewise linear in `b`, with a kink at `s_i − w·x_i` for
/// every row; its slope is `−n₊` left of every kink and rises by one at
/// each, so the flat bottom lies between the `n₊`-th and the next kink.
fn bias_range(rows: &Rows, w: &[f64]) -> Option<(f64, f64)> {
    // Each row's kink counts as many times as the row stands for.
    let positive: f64 = (0..rows.len())
        .filter(|&i| rows.sign[i] > 0.0)
        .map(|i| rows.count[i])
        .sum();
    if positive == 0.0 || positive == rows.total as f64 {
        return None;
    }
    let mut kinks: Vec<(f64, f64)> = (0..rows.len())
        .map(|i| (rows.sign[i] - rows.dot(w, i), rows.count[i]))
        .collect();
    kinks.sort_by(|a, b| a.0.total_cmp(&b.0));
    // The slope passes 0 at the kink where the counts reach n₊, and stays
    // 0 up to the next one.
    let mut seen = 0.0;
    for (k, &(at, count)) in kinks.iter().enumerate() {
        seen += count;
        if seen >= positive {
            let next = if seen > positive {
                at
            } else {
                kinks.get(k + 1)?.0
            };
            return Some((at, next));
        }
    }
    None
}

/// `½‖w‖² + C Σ max(0, 1 − s_i(w·x_i + b))` and `Σ max(…)`, over the
/// rows of the data (each distinct row times its count).
fn primal(rows: &Rows, w: &[f64], b: f64, c: f64) -> (f64, f64) {
    let loss: f64 = (0..rows.len())
        .map(|i| rows.count[i] * (1.0 - rows.sign[i] * (rows.dot(w, i) + b)).max(0.0))
        .sum();
    (0.5 * w.iter().map(|v| v * v).sum::<f64>() + c * loss, loss)
}

/// A lower bound on the optimum of the C-form primal: the dual objective
/// `Σ α − ½‖Σ α_i s_i x_i‖²` at `α`, first made feasible for the bias
/// (`Σ α_i s_i = 0`) by lowering the `α` of the side in excess.
fn lower_bound(rows: &Rows, alpha: &[f64]) -> f64 {
    let mut a = alpha.to_vec();
    let mut excess: f64 = a.iter().zip(&rows.sign).map(|(a, s)| a * s).sum();
    let side = if excess > 0.0 { 1.0 } else { -1.0 };
    excess = excess.abs();
    for (ai, &s) in a.iter_mut().zip(&rows.sign) {
        if excess <= 0.0 {
            break;
        }
        if s == side && *ai > 0.0 {
            let take = ai.min(excess);
            *ai -= take;
            excess -= take;
        }
    }
    if excess > 0.0 {
        return f64::NEG_INFINITY;
    }
    let mut w = vec![0.0; rows.d];
    for (i, &ai) in a.iter().enumerate() {
        if ai != 0.0 {
            rows.add(&mut w, i, ai * rows.sign[i]);
        }
    }
    a.iter().sum::<f64>() - 0.5 * w.iter().map(|v| v * v).sum::<f64>()
}

/// Solves `mean hinge + l2/2·‖w‖²` over `rows` exactly (to [`GAP`]),
/// starting from `start` (`[b, w…]`): the dual starts with
/// `α_i = C` for the rows `start` leaves inside the margin and 0 for the
/// others, and the bias search at `start`'s intercept.
pub fn solve(rows: &Rows, l2: f64, start: &[f64]) -> std::result::Result<Solution, String> {
    let (n, d) = (rows.len(), rows.d);
    if n == 0 {
        return Err("no rows".into());
    }
    if l2.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
        return Err("the exact hinge solution needs model.l2 > 0".into());
    }
    let c = 1.0 / (rows.total as f64 * l2);
    let cap: Vec<f64> = rows.count.iter().map(|k| k * c).collect();
    let alpha = (0..n)
        .map(|i| {
            let z = rows.sign[i] * (start[0] + rows.dot(&start[1..], i));
            if z < 1.0 {
                cap[i]
            } else {
                0.0
            }
        })
        .collect();
    let dual = Dual {
        rows,
        c,
        cap,
        alpha,
        w: vec![0.0; d],
        order: (0..n).collect(),
        rng: 0x7469_6465_6d69_6c6c,
        passes: 0,
        work: 0.0,
    };
    let mut search = Search {
        dual,
        l2,
        found: None,
        proposal: None,
    };
    let b = search.bias(start[0])?;
    if let Some(solution) = search.found {
        return Ok(solution);
    }
    let (best, loss, gap) = search.dual.certify(b)?;
    if gap <= GAP {
        return Ok(search.dual.solution(best, loss, gap, l2));
    }
    Err(format!(
        "the exact hinge solution stopped at a relative duality gap of {gap:.2e}, above the {GAP:e} a forget must match"
    ))
}

/// The search for the bias: the optimum of the problem at a fixed bias
/// `b` is found exactly (descent, then exact steps at that bias), and `b`
/// moves to the root of `h(b) = Σ α_i s_i` (the derivative of that
/// optimum in `b`, non-increasing) by a safeguarded secant search. At
/// every bias tried, a joint exact step (moving the bias) is tried too:
/// once the free rows are right it lands on the optimum, which ends the
/// search early; before that, its bias is the next one tried where it
/// lies inside the range searched.
struct Search<'a> {
    dual: Dual<'a>,
    l2: f64,
    found: Option<Solution>,
    /// The bias of the last joint step that did not certify: a guess at
    /// the root, tried where it lies inside the range searched.
    proposal: Option<f64>,
}

impl Search<'_> {
    /// `h(b)`, with the dual at the optimum for bias `b`; records a
    /// certified solution in `found` when the joint step reaches one.
    fn h(&mut self, b: f64) -> std::result::Result<f64, String> {
        self.proposal = None;
        let dual = &mut self.dual;
        loop {
            if dual.descend(b, INNER_EPS, ROUND_PASSES)? {
                break;
            }
            dual.exact_step(b, false);
            if dual.passes >= MAX_PASSES || dual.work >= MAX_WORK {
                let (_, _, gap) = dual.certify(b)?;
                return Err(format!(
                    "the dual of the hinge problem did not reach a relative duality gap of {GAP:e} in {} passes over the {} distinct rows (reached {gap:.2e}); the exact solution suits problems with at most {MAX_FREE} distinct rows on the margin at once: with more (many hashed slots), use model.kind = 'logistic'",
                    dual.passes,
                    dual.rows.len()
                ));
            }
        }
        let h: f64 = dual
            .alpha
            .iter()
            .zip(&dual.rows.sign)
            .map(|(a, s)| a * s)
            .sum();
        let (best, loss, gap) = dual.certify(b)?;
        tracing::debug!(b, h, gap, passes = dual.passes, "hinge dual at a bias");
        if gap <= GAP {
            self.found = Some(dual.solution(best, loss, gap, self.l2));
            return Ok(0.0);
        }
        let kept = dual.alpha.clone();
        if let Some(nb) = dual.exact_step(b, true) {
            let (best, loss, gap) = dual.certify(nb)?;
            tracing::debug!(gap, "hinge dual joint step");
            if gap <= GAP {
                self.found = Some(dual.solution(best, loss, gap, self.l2));
                return Ok(0.0);
            }
            self.proposal = Some(nb).filter(|b| b.is_finite());
        }
        dual.alpha = kept;
        dual.refresh();
        Ok(h)
    }

    /// The bias whose optimum is balanced (`h(b) = 0`), searched from
    /// `b0`; the dual is left at the last bias tried, which it returns.
    fn bias(&mut self, b0: f64) -> std::result::Result<f64, String> {
        let h0 = self.h(b0)?;
        if h0 == 0.0 {
            return Ok(b0);
        }
        // h is non-increasing: h > 0 asks for a larger bias.
        let dir = if h0 > 0.0 { 1.0 } else { -1.0 };
        let mut step = 1e-3 * b0.abs().max(1.0);
        let (mut b, mut hb) = (b0, h0);
        let mut bracket = None;
        for _ in 0..64 {
            let nb = match self.proposal {
                Some(p) if dir * (p - b) > 0.0 => {
                    step = step.max((p - b).abs());
                    p
                }
                _ => b + dir * step,
            };
            let hn = self.h(nb)?;
            if hn == 0.0 {
                return Ok(nb);
            }
            if (hn > 0.0) != (h0 > 0.0) {
                bracket = Some(if dir > 0.0 {
                    ((b, hb), (nb, hn))
                } else {
                    ((nb, hn), (b, hb))
                });
                break;
            }
            (b, hb) = (nb, hn);
            step *= 2.0;
        }
        let Some(((mut lo, mut hlo), (mut hi, mut hhi))) = bracket else {
            return Err(format!(
                "no intercept balances the dual of the hinge problem (searched from {b0} to {b})"
            ));
        };
        // Illinois regula falsi on [lo, hi] (h(lo) > 0 > h(hi)), with a
        // bisection every fourth step so that the bracket always shrinks.
        let mut last = hi;
        let mut side = 0i8;
        for it in 0..200 {
            if hi - lo <= 1e-15 * lo.abs().max(hi.abs()).max(1.0) {
                break;
            }
            let mut x = match self.proposal {
                Some(p) if p > lo && p < hi && it % 4 != 3 => p,
                _ => hi - hhi * (hi - lo) / (hhi - hlo),
            };
            if it % 4 == 3 || !(x > lo && x < hi) {
                x = 0.5 * (lo + hi);
            }
            let hx = self.h(x)?;
            last = x;
            if hx == 0.0 {
                return Ok(x);
            }
            if hx > 0.0 {
                (lo, hlo) = (x, hx);
                if side == 1 {
                    hhi *= 0.5;
                }
                side = 1;
            } else {
                (hi, hhi) = (x, hx);
                if side == -1 {
                    hlo *= 0.5;
                }
                side = -1;
            }
        }
        Ok(last)
    }
}

/// Replaces the weights of `model`, a hinge model trained by L-BFGS on
/// the rows of `source`, with the certified optimum of the same problem
/// (see the module's text), started from them; its objective becomes the
/// optimum's, and `training.optimizer` says how it was found.
pub fn polish(model: &mut ModelFile, source: &dyn DataSource, l2: f64) -> Result<Solution> {
    let here = Path::new("the trained model");
    let spec = model.features.clone();
    let linear: LinearModel = model.to_model(here)?;
    let classes = spec
        .classes
        .as_ref()
        .ok_or_else(|| Error::Internal("a hinge model without its classes".into()))?;
    let map = ClassMap::new(classes);
    let mut columns = spec.feature_columns();
    columns.push(spec.label.clone());
    let mut rows = Rows::new(spec.numeric.len(), linear.layout.d);
    for unit in source.units() {
        let path = source.unit_path(unit).to_path_buf();
        let mut first_row = unit.file_row;
        for batch in source.open(unit, &columns, WINDOW_ROWS)? {
            let batch = batch?;
            let origin = Origin {
                file: &path,
                row_group: Some(unit.row_group),
                first_row,
            };
            rows.push_block(&decode(&batch, &spec, LabelUse::Classes(&map), &origin)?);
            first_row += batch.num_rows() as u64;
        }
    }
    if rows.total != model.training.rows {
        return Err(Error::Internal(format!(
            "the exact hinge solution read {} rows, the model was trained on {}",
            rows.total, model.training.rows
        )));
    }
    let solution =
        solve(&rows, l2, &linear.theta).map_err(|message| Error::Unsolvable { message })?;
    tracing::info!(
        gap = solution.gap,
        passes = solution.passes,
        objective = solution.objective,
        "hinge solved exactly through its dual"
    );
    let exact = LinearModel {
        theta: solution.theta.clone(),
        ..linear
    };
    let mut training = model.training.clone();
    training.objective = Some(solution.objective);
    training.optimizer = "lbfgs+dual".into();
    let stream = model.stream.take();
    *model = ModelFile::new(&exact, &spec, training);
    model.stream = stream;
    Ok(solution)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows of numeric values `x` (row-major, `p` per row) and hashed
    /// slots `h` (one per row, sign +1), labels 0 / 1.
    fn rows(p: usize, x: &[f32], h: &[u32], y: &[f64], slots: usize) -> Rows {
        let n = y.len();
        let c = usize::from(!h.is_empty());
        let block = Block {
            rows: n,
            p,
            dense: x.to_vec(),
            c,
            hashed: h.to_vec(),
            signs: vec![1.0; h.len()],
            label: y.iter().copied().collect(),
            ..Block::default()
        };
        let mut r = Rows::new(p, p + slots);
        r.push_block(&block);
        r
    }

    fn objective(r: &Rows, theta: &[f64], l2: f64) -> f64 {
        let w = &theta[1..];
        let loss: f64 = (0..r.len())
            .map(|i| (1.0 - r.sign[i] * (r.dot(w, i) + theta[0])).max(0.0))
            .sum();
        loss / r.len() as f64 + 0.5 * l2 * w.iter().map(|v| v * v).sum::<f64>()
    }

    #[test]
    fn two_points_reach_the_closed_form() {
        // x = ±1 with labels 1 / 0: b = 0 by symmetry, and
        // (1 − w)₊ + l2/2·w² is least at w = min(1, 1/l2): at the kink for
        // l2 < 1, inside the linear piece for l2 > 1.
        let r = rows(1, &[1.0, -1.0], &[], &[1.0, 0.0], 0);
        for (l2, w) in [(0.1, 1.0), (2.0, 0.5), (4.0, 0.25)] {
            let s = solve(&r, l2, &[0.0, 0.0]).unwrap();
            // The exact step solves with a ridge of 1e-12 of the Gram
            // matrix's diagonal: the weights are that close.
            assert!((s.theta[1] - w).abs() < 1e-10, "l2 {l2}: {:?}", s.theta);
            assert!(s.theta[0].abs() < 1e-10, "l2 {l2}: {:?}", s.theta);
            let want = (1.0f64 - w).max(0.0) + 0.5 * l2 * w * w;
            assert!(
                (s.objective - want).abs() <= GAP * want,
                "{} vs {want}",
                s.objective
            );
            assert!(s.gap <= GAP);
        }
    }

    #[test]
    fn the_optimum_is_certified_and_no_neighbour_is_lower() {
        // Overlapping classes, repeated rows with both labels (free rows
        // whose conditions contradict each other) and hashed slots that
        // collide: no perturbation of the solution lowers the objective.
        let mut state = 0x1234_5678_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let (n, p, slots) = (300, 3, 8);
        let mut x = Vec::new();
        let mut h = Vec::new();
        let mut y = Vec::new();
        for i in 0..n {
            let label = f64::from(u8::from(next() < 0.5));
            let row: Vec<f32> = (0..p)
                .map(|j| (next() * 2.0 - 1.0 + if j == 0 { label - 0.5 } else { 0.0 }) as f32)
                .collect();
            if i % 10 == 9 {
                // The previous row again, with the other label.
                let k = x.len() - p;
                let prev: Vec<f32> = x[k..].to_vec();
                x.extend(prev);
                h.push(h[h.len() - 1]);
                y.push(1.0 - y[y.len() - 1]);
                continue;
            }
            x.extend(row);
            h.push((next() * slots as f64) as u32);
            y.push(label);
        }
        let r = rows(p, &x, &h, &y, slots);
        let l2 = 0.05;
        let s = solve(&r, l2, &vec![0.0; p + slots + 1]).unwrap();
        assert!(s.gap <= GAP, "gap {}", s.gap);
        let f = objective(&r, &s.theta, l2);
        assert!(
            (f - s.objective).abs() <= 1e-14 * f,
            "{f} vs {}",
            s.objective
        );
        for k in 0..s.theta.len() {
            for step in [1e-7, -1e-7, 1e-4, -1e-4] {
                let mut t = s.theta.clone();
                t[k] += step;
                let g = objective(&r, &t, l2);
                assert!(
                    g >= f * (1.0 - 1e-12),
                    "parameter {k} moved by {step}: {g} < {f}"
                );
            }
        }
        // Started elsewhere (a warm start), the same optimum.
        let s2 = solve(&r, l2, &s.theta).unwrap();
        assert!((s2.objective - s.objective).abs() <= 2.0 * GAP * f);
    }

    #[test]
    fn one_class_is_an_error() {
        let r = rows(1, &[1.0, 2.0], &[], &[1.0, 1.0], 0);
        let e = solve(&r, 0.1, &[0.0, 0.0]).unwrap_err();
        assert!(e.contains("both classes"), "{e}");
    }
}
